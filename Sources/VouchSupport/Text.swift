import Foundation

/// The last `lines` lines of `text`, at most `maxBytes` bytes, for error messages.
package func tail(_ text: String, lines: Int = 20, maxBytes: Int = 4000) -> String {
    var trimmed = text
    if trimmed.utf8.count > maxBytes {
        trimmed = "…" + String(decoding: trimmed.utf8.suffix(maxBytes), as: UTF8.self)
    }
    let all = trimmed.split(separator: "\n", omittingEmptySubsequences: false)
    let kept = all.suffix(lines + (all.last == "" ? 1 : 0))
    // One very long line (e.g. binary output) must not bury the message.
    let shortened = kept.map { $0.count > 300 ? $0.prefix(150) + " … " + $0.suffix(100) : $0 }
    return shortened.joined(separator: "\n").trimmingTrailingNewlines()
}

/// Quotes `s` for a POSIX shell.
public func shellQuote(_ s: String) -> String {
    "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'"
}

/// `3 s`, `1.5 s`, `0.05 s`.
package func formatSeconds(_ s: Double) -> String {
    if s == s.rounded() { return "\(Int(s)) s" }
    return String(format: s < 0.1 ? "%.2f s" : "%.1f s", s)
}

extension String {
    package func trimmingTrailingNewlines() -> String {
        var s = Substring(self)
        // "\r\n" is one Character, equal to neither "\n" nor "\r".
        while s.last == "\n" || s.last == "\r" || s.last == "\r\n" { s = s.dropLast() }
        return String(s)
    }
}

extension Duration {
    /// The duration in seconds.
    package var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

/// Where `needle` first occurs in `haystack`.
package func firstRange(of needle: [UInt8], in haystack: some RandomAccessCollection<UInt8>) -> Range<Int>? {
    let bytes = Array(haystack)
    guard !needle.isEmpty, bytes.count >= needle.count else { return nil }
    var i = 0
    while let start = bytes[i...].firstIndex(of: needle[0]) {
        if bytes.count - start < needle.count { return nil }
        if bytes[start..<start + needle.count].elementsEqual(needle) { return start..<start + needle.count }
        i = start + 1
    }
    return nil
}

/// The first line of an error's description.
package func firstLine(_ error: any Error) -> String {
    "\(error)".split(separator: "\n").first.map(String.init) ?? "\(error)"
}
