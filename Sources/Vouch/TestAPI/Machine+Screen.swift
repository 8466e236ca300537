import Foundation
import Synchronization
import VouchBackends
import VouchSupport

extension Machine {
    /// Saves what the machine's display shows as a PNG and returns its path.
    /// As in nixpkgs, a `name` without a dot gets `.png`, and one without a
    /// slash goes into the output directory. A QEMU machine's display is its
    /// VGA card (`"graphics": true`); on other backends Vouch captures the
    /// guest's X display (`:0`) from inside when it runs one, else its
    /// framebuffer.
    /// - Throws: `.unsupported` saying what the machine lacks (no VGA card,
    ///   no X server, no `xwd`, no framebuffer), `.qmpError`/`.other` when
    ///   the capture fails.
    @discardableResult
    public func screenshot(_ name: String, file: String = #filePath, line: Int = #line) async throws(VouchError) -> URL {
        var fileName = name
        if !fileName.contains(".") { fileName += ".png" }
        let url = fileName.contains("/")
            ? URL(fileURLWithPath: fileName, relativeTo: URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).standardizedFileURL
            : outputDirectory.appendingPathComponent(fileName)
        log.log("taking a screenshot: \(url.path)", machine: self.name)
        try await capture(to: url.path, location: .init(file: file, line: line))
        return url
    }

    /// Captures the screen to `path` (a PNG).
    func capture(to path: String, location: SourceLocation) async throws(VouchError) {
        do {
            try await start()
            if let screen = backend as? ScreenCapture {
                try await screen.screenshot(toPNG: path)
            } else {
                try await captureFromInside(to: path)
            }
        } catch {
            throw error.on(name).at(location)
        }
    }

    /// From inside the guest: the X display's root window (dumped with
    /// `xwd`), or else the Linux framebuffer `/dev/fb0`; made a PNG on the host.
    private func captureFromInside(to path: String) async throws(VouchError) {
        guard try await execute("test -S /tmp/.X11-unix/X0", timeout: 30).status == 0 else {
            if try await execute("test -c /dev/fb0", timeout: 30).status == 0 { return try await captureFramebuffer(to: path) }
            let why = provider?.whyMissing(.screen).map { " (\($0))" } ?? ""
            throw VouchError(.unsupported, "this machine has no display: the \(backendName) backend gives it none\(why), "
                             + "no X server runs in the guest (/tmp/.X11-unix/X0 does not exist), and it has no framebuffer (/dev/fb0)", machine: name)
        }
        guard try await execute("command -v xwd", timeout: 30).status == 0 else {
            throw VouchError(.unsupported, "the guest runs X but has no xwd to capture it with (Debian: x11-apps)", machine: name)
        }
        try await pullAndConvert(dump: "DISPLAY=:0 xwd -root -silent", format: "xwd:", to: path)
    }

    /// The framebuffer's visible part, read from `/dev/fb0` (32 bits per pixel, BGRA).
    func captureFramebuffer(to path: String) async throws(VouchError) {
        let info = try await succeed("cd /sys/class/graphics/fb0 && echo $(cat virtual_size bits_per_pixel stride)", timeout: 30)
        let fields = info.split(whereSeparator: { $0 == "," || $0 == " " || $0 == "\n" }).compactMap { Int($0) }
        guard fields.count == 4, fields[2] == 32, fields[3] >= fields[0] * 4 else {
            throw VouchError(.unsupported, "the guest's framebuffer is not one Vouch can read (size, bits per pixel, stride: \(info.trimmingTrailingNewlines()); 32 bits per pixel needed)",
                             machine: name)
        }
        let (width, height, stride) = (fields[0], fields[1], fields[3])
        try await pullAndConvert(dump: "head -c \(stride * height) /dev/fb0", format: "-size \(stride / 4)x\(height) -depth 8 bgra:",
                                 to: path, crop: "\(width)x\(height)+0+0")
    }

    /// Runs `dump` in the guest into the shared directory, brings the file
    /// over and has ImageMagick make a PNG of it (`format` names its kind).
    private func pullAndConvert(dump: String, format: String, to path: String, crop: String? = nil) async throws(VouchError) {
        let transfer = try capability(FileTransfer.self, .files, for: "screenshot")
        let item = "screen-\(UUID().uuidString.prefix(8)).raw"
        let hostFile = context.sharedDirectory + "/" + item
        defer { try? FileManager.default.removeItem(atPath: hostFile) }
        try await succeed("\(dump) > \(transfer.guestSharedDirectory)/\(item)", timeout: 60)
        try await transfer.pullShared(item, shell: try connectedShell())
        var args = format.split(separator: " ").dropLast().map(String.init)
        args.append(String(format.split(separator: " ").last ?? "") + hostFile)
        if let crop { args += ["-crop", crop, "+repage"] }
        args += ["-alpha", "off", "png:" + path]
        let (status, output) = try await ChildProcess.run("convert", args)
        guard status == .exited(0) else {
            throw VouchError(.other, "convert could not turn the guest's screen dump into a PNG (\(status)); apt-get install imagemagick",
                             machine: name, outputTail: tail(output))
        }
    }

    /// The text tesseract reads on the screen now (nixpkgs' `get_screen_text`).
    /// - Throws: as `screenshot`; `.unsupported` when tesseract is missing.
    public func screenText(file: String = #filePath, line: Int = #line) async throws(VouchError) -> String {
        try await withScratchScreenshot(location: .init(file: file, line: line)) { png throws(VouchError) in
            try await OCR.text(of: png, machine: self.name)
        }
    }

    /// The screen read three ways at once: plain and two preprocessed
    /// passes (nixpkgs' `get_screen_text_variants`).
    /// - Throws: as `screenText`; `.unsupported` when ImageMagick is missing.
    public func screenTextVariants(file: String = #filePath, line: Int = #line) async throws(VouchError) -> [String] {
        try await withScratchScreenshot(location: .init(file: file, line: line)) { png throws(VouchError) in
            try await OCR.variants(of: png, machine: self.name)
        }
    }

    /// `screenTextVariants` with the passes run one after another, to
    /// measure what running them at once gains. Not for tests.
    @_spi(Benchmark)
    public func screenTextVariantsInSequence() async throws(VouchError) -> [String] {
        try await withScratchScreenshot(location: .init(file: #filePath, line: #line)) { png throws(VouchError) in
            try await OCR.variants(of: png, machine: self.name, parallel: false)
        }
    }

    /// Waits until OCR finds `regex` on the screen in any of the variants.
    /// One OCR round runs at a time per machine; a round is cut short as
    /// soon as one variant matches, or the deadline passes.
    /// - Throws: `.timeout` with the text last read; as `screenText`.
    public func waitForText(_ regex: String, timeout: Double = 900, file: String = #filePath, line: Int = #line) async throws(VouchError) {
        let location = SourceLocation(file: file, line: line)
        let pattern = try Self.regex(regex, machine: name)
        log.log("waiting for \"\(regex)\" to appear on the screen", machine: name)
        let lastRead = Mutex("")
        try await poll("\"\(regex)\" on the screen", timeout: timeout, location: location) { deadline throws(VouchError) in
            // The wait's deadline cuts a round short (its three tesseracts are killed).
            let round: [String]? = try await withDeadline(seconds: deadline.remaining, grace: 0.5) { () throws(VouchError) in
                try await self.withScratchScreenshot(location: location) { png throws(VouchError) in
                    try await OCR.variants(of: png, machine: self.name) { Self.matches(pattern, $0) }
                }
            }
            guard let texts = round else {
                let before = lastRead.withLock { $0 }
                return .notYet(seen: "the OCR round in progress was cut short by the deadline" + (before.isEmpty ? "" : "; the one before it " + before))
            }
            if texts.contains(where: { Self.matches(pattern, $0) }) { return .done }
            let seen = "OCR read:\n" + (texts.first ?? "")
            lastRead.withLock { $0 = seen }
            return .notYet(seen: seen)
        }
    }

    /// Takes a screenshot into a scratch file, hands it to `body` under the
    /// machine's OCR lock, and removes it.
    private func withScratchScreenshot<T: Sendable>(
        location: SourceLocation, _ body: @escaping @Sendable (String) async throws(VouchError) -> T
    ) async throws(VouchError) -> T {
        guard try await ocrLock.acquire() else { throw VouchError(.timeout, "the OCR lock was not free", machine: name) }
        defer { ocrLock.release() }
        let png = FileManager.default.temporaryDirectory.appendingPathComponent("vouch-ocr-\(getpid())-\(UUID().uuidString.prefix(8)).png").path
        defer { try? FileManager.default.removeItem(atPath: png) }
        try await capture(to: png, location: location)
        do { return try await body(png) } catch { throw error.on(name).at(location) }
    }

    /// Compiles a script's regular expression (ICU syntax, which agrees with
    /// Python's `re` on what tests use: classes, groups, alternation).
    /// - Throws: `.invalidSpec` naming the pattern.
    static func regex(_ pattern: String, machine: String) throws(VouchError) -> NSRegularExpression {
        do { return try NSRegularExpression(pattern: pattern) } catch {
            throw VouchError(.invalidSpec, "not a valid regular expression: \(pattern)", machine: machine, cause: SendableError(error))
        }
    }

    static func matches(_ regex: NSRegularExpression, _ text: String) -> Bool {
        regex.firstMatch(in: text, range: NSRange(text.startIndex..., in: text)) != nil
    }

    /// Photographs the display for a failure report, into `directory`, when
    /// the machine runs and has one; the file, or nil. Never throws: a
    /// failing test must not fail differently because its picture did.
    func failurePicture(in directory: URL, stamp: String) async -> URL? {
        guard booted, let screen = backend as? ScreenCapture, screen.hasDisplay else { return nil }
        let url = directory.appendingPathComponent("failure-\(name)-\(stamp).png")
        do {
            try await screen.screenshot(toPNG: url.path)
            log.log("saved the screen at the failure: \(url.lastPathComponent)", machine: name)
            return url
        } catch {
            log.warning("could not save the screen at the failure: \(error.message)", machine: name)
            return nil
        }
    }
}
