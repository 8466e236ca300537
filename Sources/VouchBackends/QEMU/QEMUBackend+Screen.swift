import Foundation
import VouchSupport
import VouchWire

// The display and the serial console's input of a QEMU machine.
extension QEMUBackend: ScreenCapture, ConsoleInput {
    var hasDisplay: Bool {
        // nixpkgs' test VMs have graphics unless their config turns them off.
        if case .startScript = config.boot { return true }
        return config.graphics
    }

    func screenshot(toPNG path: String) async throws(VouchError) {
        let qmp = try qmp()
        // QEMU writes the file itself; a name of our own in the state
        // directory keeps a half-written picture out of the output directory.
        let scratch = context.stateDirectory + "/screen-\(UUID().uuidString.prefix(8))"
        defer {
            try? FileManager.default.removeItem(atPath: scratch + ".png")
            try? FileManager.default.removeItem(atPath: scratch + ".ppm")
        }
        var reply = try await qmp.reply("screendump", ["filename": .string(scratch + ".png"), "format": "png"])
        var written = scratch + ".png"
        if let error = Self.refusal(reply), error.explanation.contains("format") {
            // A QEMU older than 7.1 writes PPM only.
            reply = try await qmp.reply("screendump", ["filename": .string(scratch + ".ppm")])
            written = scratch + ".ppm"
        }
        if let error = Self.refusal(reply) {
            if error.explanation.contains("no QemuConsole") || error.explanation.contains("no console") {
                throw VouchError(.unsupported, "this machine has no display: give it \"graphics\": true in the spec (a start script needs virtualisation.graphics)",
                                 machine: context.name, cause: error)
            }
            throw VouchError(.qmpError, "QEMU could not take a screenshot: \(error)", machine: context.name, cause: error)
        }
        if written.hasSuffix(".ppm") { try await Self.convertToPNG(written, scratch + ".png", machine: context.name) }
        do {
            try? FileManager.default.removeItem(atPath: path)
            try FileManager.default.moveItem(atPath: scratch + ".png", toPath: path)
        } catch {
            throw VouchError(.other, "cannot write the screenshot to \(path)", machine: context.name, cause: SendableError(error))
        }
    }

    func sendConsole(_ bytes: [UInt8]) async throws(VouchError) {
        guard let process = state.withLock({ $0.process }), process.exitStatus == nil, let fd = process.stdinFD else {
            throw VouchError(.machineDown, "QEMU is not running", machine: context.name)
        }
        try await writeAll(fd: fd, bytes, what: "the serial console's input", until: Deadline(seconds: 10))
    }

    private static func refusal(_ reply: JSONValue) -> QMPErrorReply? {
        guard let error = reply["error"] else { return nil }
        return QMPErrorReply(errorClass: error["class"]?.stringValue ?? "?", explanation: error["desc"]?.stringValue ?? "")
    }

    private static func convertToPNG(_ ppm: String, _ png: String, machine: String) async throws(VouchError) {
        let (status, output) = try await ChildProcess.run("convert", [ppm, png])
        guard status == .exited(0) else {
            throw VouchError(.other, "convert could not turn QEMU's PPM screenshot into a PNG (\(status)); apt-get install imagemagick",
                             machine: machine, outputTail: tail(output))
        }
    }
}
