import VouchSupport

/// The rules for node names, checked once, before anything starts.
///
/// A node name becomes a host name (in the guest and every `/etc/hosts`),
/// a file name (`vm-state-NAME`), and a variable in the test script (`a-b`
/// becomes `a_b`, as in nixpkgs), so it must be valid as all three.
public enum NodeNames {
    /// The longest name: a host name label is at most 63 characters.
    public static let maxLength = 63

    /// The language of the test script, whose variables the names become.
    public enum ScriptLanguage: Sendable {
        case swift, python
    }

    /// Replaces characters that cannot appear in an identifier with `_`, and
    /// a leading digit too, as nixpkgs does (`a-b` is `a_b`, `1a` is `_a`).
    public static func variableName(for node: String) -> String {
        var name = node.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") ? $0 : "_" }
        if let first = name.first, first.isNumber { name[0] = "_" }
        return String(name)
    }

    /// Checks one name's characters and length.
    /// - Throws: `.invalidSpec` saying exactly what is allowed.
    public static func check(_ name: String, at path: String) throws(VouchError) {
        let allowed = "ASCII letters (a-z, A-Z), digits (0-9), '-' and '_', starting with a letter or digit"
        guard !name.isEmpty else { throw SpecObject.invalid("\(path): a machine name cannot be empty") }
        if let bad = name.first(where: { !($0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_")) }) {
            throw SpecObject.invalid("\(path): machine name '\(name)' contains '\(bad)'; names may only contain \(allowed)")
        }
        guard let first = name.first, first.isLetter || first.isNumber else {
            throw SpecObject.invalid("\(path): machine name '\(name)' starts with '\(name.first!)'; names may only contain \(allowed)")
        }
        guard name.count <= maxLength else {
            throw SpecObject.invalid("\(path): machine name '\(name.prefix(20))…' has \(name.count) characters; at most \(maxLength) (it is a host name)")
        }
    }

    /// Checks that no two names become the same variable.
    /// - Throws: `.invalidSpec` naming both.
    public static func checkDistinct(_ names: [String]) throws(VouchError) {
        var seen: [String: String] = [:]
        for name in names.sorted() {
            let variable = variableName(for: name)
            if let other = seen[variable] {
                throw SpecObject.invalid("machines '\(other)' and '\(name)' would both be the script variable `\(variable)`: rename one")
            }
            seen[variable] = name
        }
    }

    /// Checks that every name works as a variable of a script in `language`.
    /// Swift binds names with backticks, so only the script's own globals
    /// are taken; Python cannot use a keyword as a variable at all.
    /// - Throws: `.invalidSpec` naming the machine and the clash.
    public static func check(_ names: [String], for language: ScriptLanguage) throws(VouchError) {
        for name in names {
            let variable = variableName(for: name)
            switch language {
            case .swift:
                if swiftGlobals.contains(variable) {
                    throw SpecObject.invalid("machine '\(name)': a Swift test script already has a global `\(variable)`; rename the machine")
                }
            case .python:
                if pythonKeywords.contains(variable) {
                    throw SpecObject.invalid("machine '\(name)': `\(variable)` is a Python keyword, so a Python test script cannot name it; rename the machine")
                }
            }
        }
    }

    /// Names a compiled Swift script defines itself (see `ScriptCompiler.wrap`).
    static let swiftGlobals: Set<String> = ["driver", "vlans"]

    /// Python 3's hard keywords (`keyword.kwlist`).
    static let pythonKeywords: Set<String> = [
        "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue", "def", "del",
        "elif", "else", "except", "finally", "for", "from", "global", "if", "import", "in", "is", "lambda", "nonlocal",
        "not", "or", "pass", "raise", "return", "try", "while", "with", "yield",
    ]
}
