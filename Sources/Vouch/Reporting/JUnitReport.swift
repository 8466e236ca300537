import Foundation
import Synchronization
import VouchSupport

/// Collects one test case per subtest (plus one for the script as a whole)
/// and writes them as JUnit XML, the format CI systems read.
public final class JUnitReport: Sendable {
    /// One test case.
    public struct Case: Sendable {
        /// The test case (subtest) name.
        public var name: String
        /// How long it took.
        public var seconds: Double
        /// The failure message and output tail, or nil if it passed.
        public var failure: String?
    }

    private let cases = Mutex<[Case]>([])
    /// The test suite name (the test's name).
    public let suiteName: String

    /// An empty report for the suite.
    public init(suiteName: String) {
        self.suiteName = suiteName
    }

    /// Records a finished case.
    public func record(_ name: String, seconds: Double, failure: String?) {
        cases.withLock { $0.append(Case(name: name, seconds: seconds, failure: failure)) }
    }

    /// Adds a line to every failing case's failure text (e.g. the screenshots
    /// taken when the test failed).
    public func noteOnFailures(_ note: String) {
        cases.withLock { cases in
            for i in cases.indices where cases[i].failure != nil { cases[i].failure! += "\n" + note }
        }
    }

    /// All recorded cases, in order.
    public var all: [Case] { cases.withLock { $0 } }

    /// The XML document.
    public func xml() -> String {
        let all = self.all
        let failures = all.filter { $0.failure != nil }.count
        let total = all.reduce(0) { $0 + $1.seconds }
        var out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        out += "<testsuites>\n"
        out += "  <testsuite name=\"\(escape(suiteName))\" tests=\"\(all.count)\" failures=\"\(failures)\" errors=\"0\" time=\"\(String(format: "%.3f", total))\">\n"
        for c in all {
            let open = "    <testcase classname=\"\(escape(suiteName))\" name=\"\(escape(c.name))\" time=\"\(String(format: "%.3f", c.seconds))\""
            if let failure = c.failure {
                let firstLine = failure.split(separator: "\n").first.map(String.init) ?? failure
                out += open + ">\n"
                out += "      <failure message=\"\(escape(firstLine))\">\(escape(failure))</failure>\n"
                out += "    </testcase>\n"
            } else {
                out += open + "/>\n"
            }
        }
        out += "  </testsuite>\n</testsuites>\n"
        return out
    }

    /// Writes the XML to `url`.
    /// - Throws: `.other` with the file system's error as the cause.
    public func write(to url: URL) throws(VouchError) {
        try vouching("cannot write the JUnit report to \(url.path)") { try xml().write(to: url, atomically: true, encoding: .utf8) }
    }

    private func escape(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "\n", "\t": out.unicodeScalars.append(scalar)
            case _ where scalar.value < 0x20: out += "\\x" + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
