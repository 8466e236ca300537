import Foundation
import Synchronization
import VouchSupport

/// Reads text off a screenshot with tesseract, as nixpkgs' driver does; the
/// variants add ImageMagick-preprocessed passes that catch light-on-dark
/// and low-contrast text the plain pass misses.
enum OCR {
    /// Reads `png` in one tesseract pass (page segmentation 11: sparse text).
    /// - Throws: `.unsupported` when tesseract is not installed, `.other`
    ///   with its output when it fails, `.cancelled`.
    static func text(of png: String, machine: String, tesseract: String = "tesseract") async throws(VouchError) -> String {
        guard ChildProcess.resolve(tesseract) != nil else {
            throw VouchError(.unsupported, "OCR needs tesseract, which is not installed: apt-get install tesseract-ocr (scripts/setup does)",
                             machine: machine)
        }
        var engine = Engine.chosen.withLock { $0 }
        while true {
            let (status, output) = try await ChildProcess.run(
                tesseract, [png, "stdout", "--oem", engine.rawValue, "--psm", "11", "-c", "debug_file=/dev/null"], timeout: 120)
            if status == .exited(0) { return output }
            // Debian's language data is LSTM only; nixpkgs asks for the legacy engine.
            if engine == .legacyAndLSTM, output.contains("legacy engine") || output.contains("components are not present") {
                engine = .lstm
                Engine.chosen.withLock { $0 = .lstm }
                continue
            }
            throw VouchError(.other, "tesseract could not read the screenshot (\(status))", machine: machine, outputTail: tail(output))
        }
    }

    /// The plain pass and two preprocessed ones (upscaled, contrast
    /// normalised, grayscale, posterised; the second also negated), run at
    /// the same time. Cancelling the caller stops all three; so does a pass
    /// whose text is `enough`, and then only the passes done are returned.
    /// - Throws: as `text(of:)`; `.unsupported` when ImageMagick's
    ///   `convert` is missing.
    static func variants(
        of png: String, machine: String, parallel: Bool = true, enough: (@Sendable (String) -> Bool)? = nil
    ) async throws(VouchError) -> [String] {
        guard ChildProcess.resolve("convert") != nil else {
            throw VouchError(.unsupported, "OCR variants need ImageMagick, which is not installed: apt-get install imagemagick (scripts/setup does)",
                             machine: machine)
        }
        if !parallel {
            // One after another: what `vouch bench --screens` compares against.
            var texts: [String] = []
            for index in 0..<3 { texts.append(try await pass(index, of: png, machine: machine)) }
            return texts
        }
        let results: [(Int, String)]
        do {
            results = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for index in 0..<3 {
                    group.addTask { (index, try await pass(index, of: png, machine: machine)) }
                }
                var collected: [(Int, String)] = []
                for try await result in group {
                    collected.append(result)
                    if let enough, enough(result.1) {
                        group.cancelAll()
                        break
                    }
                }
                return collected
            }
        } catch let error as VouchError {
            throw error
        } catch {
            throw VouchError(.cancelled, "OCR was cancelled", machine: machine, cause: SendableError(error))
        }
        return results.sorted { $0.0 < $1.0 }.map(\.1)
    }

    /// Pass 0 reads the screenshot as it is; 1 reads it preprocessed, 2
    /// preprocessed and negated.
    private static func pass(_ index: Int, of png: String, machine: String) async throws(VouchError) -> String {
        guard index > 0 else { return try await text(of: png, machine: machine) }
        let prepared = png + ".variant\(index).png"
        defer { try? FileManager.default.removeItem(atPath: prepared) }
        try await preprocess(png, into: prepared, negate: index == 2, machine: machine)
        return try await text(of: prepared, machine: machine)
    }

    private static func preprocess(_ png: String, into output: String, negate: Bool, machine: String) async throws(VouchError) {
        var args = [png, "-filter", "Catrom", "-density", "72", "-resample", "300", "-contrast", "-normalize", "-despeckle",
                    "-type", "grayscale", "-sharpen", "1", "-posterize", "3"]
        if negate { args.append("-negate") }
        args += ["-gamma", "100", "-blur", "1x65535", output]
        let (status, log) = try await ChildProcess.run("convert", args, timeout: 120)
        guard status == .exited(0) else {
            throw VouchError(.other, "convert could not prepare the screenshot for OCR (\(status))", machine: machine, outputTail: tail(log))
        }
    }

    /// tesseract's `--oem`: nixpkgs asks for both engines (2); where only
    /// LSTM data is installed, the first refusal switches to LSTM (1) for good.
    enum Engine: String {
        case legacyAndLSTM = "2"
        case lstm = "1"

        static let chosen = Mutex(Engine.legacyAndLSTM)
    }
}
