import Foundation
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

@Suite struct ShellFramingTests {
    /// Strings full of what breaks quoting: quotes, backslashes, `$`, backticks,
    /// `!`, newlines, every C0 control character, DEL, and multi-byte UTF-8.
    static func nastyStrings() -> [String] {
        var rng = SplitMix64(seed: 0x5EED)
        let special: [Unicode.Scalar] = ["'", "\"", "\\", "$", "`", "!", "*", "?", "~", "#", ";", "&", "|", "(", ")",
                                         "{", "}", "<", ">", " ", "\n", "\r", "\t", "\u{7F}", "é", "€", "😀", "\u{1E}"]
        var strings = [
            "", "'", "\\", "\\'", "'\\''", "$'x'", "$(echo pwned)", "`echo pwned`", "${HOME}", "!!", "\u{03}\u{1C}\u{04}",
            "a\nb\n", "trailing backslash\\", "\u{1E}VOUCH:abc-1:0\n", String(repeating: "\\'", count: 500),
        ]
        strings.append(String(String.UnicodeScalarView((1...0x7F).compactMap(Unicode.Scalar.init))))
        for _ in 0..<150 {
            var s = String.UnicodeScalarView()
            for _ in 0..<Int(rng.next() % 40) {
                switch rng.next() % 4 {
                case 0: s.append(special[Int(rng.next() % UInt64(special.count))])
                case 1: s.append(Unicode.Scalar(UInt8(1 + rng.next() % 0x1F)))  // C0 controls, no NUL
                case 2: s.append(Unicode.Scalar(UInt8(0x20 + rng.next() % 0x5F)))
                default: s.append(Unicode.Scalar(UInt32(0xA0 + rng.next() % 0x3000)) ?? "x")
                }
            }
            strings.append(String(s))
        }
        return strings
    }

    @Test func commandLineIsPrintableASCII() {
        for s in Self.nastyStrings() {
            let line = ShellFraming.commandLine(s, nonce: "n-1")
            #expect(line.last == UInt8(ascii: "\n"))
            #expect(line.dropLast().allSatisfy { (0x20...0x7E).contains($0) }, "\(s.debugDescription)")
            #expect(line.starts(with: Array("__vouch $'".utf8)))
            #expect(line.dropLast().reversed().starts(with: Array(" n-1".utf8).reversed()))
        }
    }

    /// The quoted command reaches a real bash as exactly the original bytes.
    @Test func commandLineRoundTripsThroughBash() async throws {
        let strings = Self.nastyStrings()
        var script = "__vouch() { printf '%s' \"$1\"; printf '\\0'; }\n"
        for s in strings { script += String(decoding: ShellFraming.commandLine(s, nonce: "x-1"), as: UTF8.self) }
        let (status, out) = try await runHost("bash", ["--norc", "--noprofile", "-c", script],
                                               environment: ["PATH": ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin", "LC_ALL": "C"])
        #expect(status == .exited(0))
        let parts = out.split(separator: 0, omittingEmptySubsequences: false).dropLast()
        try #require(parts.count == strings.count)
        for (got, want) in zip(parts, strings) {
            #expect(Array(got) == Array(want.utf8), "\(want.debugDescription)")
        }
    }

    static let nonce = "abc-7"

    static func marker(_ nonce: String, _ status: Int) -> [UInt8] {
        [0x1E] + Array("VOUCH:\(nonce):\(status)\n".utf8)
    }

    @Test func findsMarkerAfterOutputWithoutTrailingNewline() {
        let buffer = Array("abc".utf8) + Self.marker(Self.nonce, 0) + Array("next".utf8)
        let (match, next) = ShellFraming.findMarker(nonce: Self.nonce, in: buffer, from: 0)
        #expect(match == .init(outputEnd: 3, end: 3 + Self.marker(Self.nonce, 0).count, status: 0))
        #expect(next == match?.end)
    }

    @Test func outputMayContainRecordSeparators() {
        let output: [UInt8] = [0x1E, 0x61, 0x1E, 0x1E, 0x0A, 0x1E] + Array("VOUCH".utf8) + [0x1E] + Array("VOUCH:".utf8)
        let buffer = output + Self.marker(Self.nonce, 42)
        let (match, _) = ShellFraming.findMarker(nonce: Self.nonce, in: buffer, from: 0)
        #expect(match?.outputEnd == output.count)
        #expect(match?.status == 42)
        #expect(match?.end == buffer.count)
    }

    @Test func ignoresMarkersWithAnotherNonce() {
        // Another session, an earlier command, and a nonce that merely starts with ours.
        let fakes = Self.marker("ffff-7", 1) + Self.marker("abc-6", 2) + Self.marker("abc-77", 3) + Self.marker("abc-", 4)
        let buffer = fakes + Self.marker(Self.nonce, 5)
        let (match, _) = ShellFraming.findMarker(nonce: Self.nonce, in: buffer, from: 0)
        #expect(match?.outputEnd == fakes.count)
        #expect(match?.status == 5)
        #expect(ShellFraming.findMarker(nonce: Self.nonce, in: fakes, from: 0).match == nil)
    }

    /// Feeding the stream in every possible pair of pieces, and byte by byte,
    /// finds the marker exactly once, at the same place, only once complete.
    @Test func findsMarkersSplitAcrossReads() {
        let stream = Array("out\u{1E}put".utf8) + Self.marker("abc-6", 9) + Self.marker(Self.nonce, 17) + Array("tail".utf8)
        let expected = ShellFraming.findMarker(nonce: Self.nonce, in: stream, from: 0).match
        #expect(expected?.status == 17)
        let markerEnd = expected!.end
        for split in 0...stream.count {
            for pieces in [[split], Array(1..<stream.count)] {
                var buffer: [UInt8] = []
                var scan = 0
                var found: ShellFraming.Match?
                var start = 0
                for cut in pieces + [stream.count] where cut >= start {
                    buffer += stream[start..<cut]
                    start = cut
                    let (match, next) = ShellFraming.findMarker(nonce: Self.nonce, in: buffer, from: scan)
                    #expect(next >= scan)
                    scan = next
                    if let match {
                        #expect(found == nil)
                        #expect(buffer.count >= markerEnd, "reported before the marker was complete")
                        found = match
                        break
                    }
                }
                #expect(found == expected, "split at \(pieces.count == 1 ? "\(split)" : "every byte")")
            }
        }
    }

    @Test func incompleteMarkerIsNotAMatch() {
        let full = Array("x".utf8) + Self.marker(Self.nonce, 0)
        for length in 0..<full.count {
            #expect(ShellFraming.findMarker(nonce: Self.nonce, in: Array(full[..<length]), from: 0).match == nil)
        }
    }

    @Test func setupScriptAnnouncesItsNonce() {
        let script = String(decoding: ShellFraming.setupScript(nonce: "s-1"), as: UTF8.self)
        #expect(script.hasSuffix("\n"))
        #expect(script.contains("printf '\\036VOUCH:%s:0:f\\n' s-1"))
        #expect(script.contains("printf '\\036VOUCH:%s:0:p\\n' s-1"))
        #expect(script.contains("set -euo pipefail"))
        #expect(script.contains("</dev/null"))
    }
}

/// A small deterministic generator, so failures reproduce.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
