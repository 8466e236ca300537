import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// One error model: every public call throws `VouchError` and nothing else.
/// Typed throws make the compiler hold each declaration to it; this test
/// makes sure no public declaration falls back to untyped `throws`.
@Suite struct ErrorModelTests {
    /// Protocol requirements whose signatures are not ours to choose.
    static let exempt = ["init(from decoder: any Decoder) throws", "func encode(to encoder: any Encoder) throws"]

    @Test func publicDeclarationsThrowOnlyVouchError() throws {
        let sources = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Sources")
        let files = FileManager.default.enumerator(atPath: sources.path)?.compactMap { $0 as? String }.filter { $0.hasSuffix(".swift") } ?? []
        #expect(files.count > 40)
        var untyped: [String] = []
        var checked = 0
        for file in files {
            let text = try String(contentsOf: sources.appendingPathComponent(file), encoding: .utf8)
            let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
            for (i, line) in lines.enumerated() {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                guard trimmed.hasPrefix("public "), trimmed.contains("func ") || trimmed.contains("init(") else { continue }
                // The whole signature, up to its body.
                var signature = trimmed
                var j = i
                while !signature.contains("{"), j + 1 < lines.count {
                    j += 1
                    signature += " " + lines[j].trimmingCharacters(in: .whitespaces)
                }
                guard let effects = Self.effectsAfterParameters(signature) else { continue }
                checked += 1
                // `throws(E)` passes through the caller's own error type (a log section around typed code).
                if effects.contains("throws"), !effects.contains("throws(VouchError)"), !effects.contains("throws(E)"),
                   !Self.exempt.contains(where: signature.contains) {
                    untyped.append("\(file):\(i + 1): \(trimmed)")
                }
            }
        }
        #expect(checked > 100, "public functions seen: \(checked)")
        #expect(untyped.isEmpty, "public declarations that throw something other than VouchError:\n\(untyped.joined(separator: "\n"))")
    }

    /// What follows a declaration's parameter list (its effects and result),
    /// so a closure parameter's own `throws` does not count.
    static func effectsAfterParameters(_ signature: String) -> String? {
        guard let open = signature.firstIndex(of: "(") else { return nil }
        var depth = 0
        var index = open
        while index < signature.endIndex {
            switch signature[index] {
            case "(": depth += 1
            case ")":
                depth -= 1
                if depth == 0 {
                    let rest = signature[signature.index(after: index)...]
                    return String(rest.prefix { $0 != "{" })
                }
            default: break
            }
            index = signature.index(after: index)
        }
        return nil
    }

    @Test func causesAreKeptAsValues() {
        let cause = SystemCallError("connect /run/x/qmp", errno: ECONNREFUSED)
        let error = VouchError(.qmpError, "cannot connect to QMP", machine: "vm", cause: cause)
        #expect((error.cause as? SystemCallError)?.errno == ECONNREFUSED)
        #expect(error.description == "vm: cannot connect to QMP\n  cause: connect /run/x/qmp: Connection refused")
        let wrapped = VouchError.from(CocoaError(.fileWriteFileExists), "cannot write x")
        #expect(wrapped.kind == .other && wrapped.message == "cannot write x")
        #expect(wrapped.cause is CocoaError)
        #expect(VouchError.from(CancellationError()).kind == .cancelled)
        let nested = VouchError(.bootFailed, "restore failed", cause: VouchError(.timeout, "slow"))
        #expect(nested.find(.timeout)?.message == "slow")
    }
}
