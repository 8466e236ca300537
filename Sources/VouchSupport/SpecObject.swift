/// A JSON object being validated, with its path (`machines.web`) for error
/// messages. Every accessor throws `.invalidSpec` naming the key and what
/// was expected, so a spec's mistakes are reported, never ignored.
package struct SpecObject: Sendable {
    /// The object's members.
    package let members: [String: JSONValue]
    /// Where the object is in the document, e.g. `machines.web`.
    package let path: String

    /// - Throws: `.invalidSpec` unless `json` is an object.
    package init(_ json: JSONValue, path: String) throws(VouchError) {
        guard case .object(let members) = json else {
            throw SpecObject.invalid("\(path) must be a JSON object")
        }
        self.members = members
        self.path = path
    }

    /// The error every spec check throws.
    package static func invalid(_ message: String) -> VouchError { VouchError(.invalidSpec, message) }

    /// The keys present that `keys` does not allow, in order.
    package func unknownKeys(_ keys: Set<String>) -> [String] {
        members.keys.sorted().filter { !keys.contains($0) }
    }

    /// Throws for the first key not in `keys`, suggesting the nearest allowed one.
    package func allow(_ keys: Set<String>) throws(VouchError) {
        guard let key = unknownKeys(keys).first else { return }
        throw SpecObject.invalid("\(path).\(key): unknown key\(SpecObject.suggestion(for: key, among: keys))")
    }

    /// " (did you mean X?)" when an allowed key is close to `key`.
    package static func suggestion(for key: String, among keys: Set<String>) -> String {
        keys.min { editDistance($0, key) < editDistance($1, key) }
            .flatMap { editDistance($0, key) <= 3 ? " (did you mean \($0)?)" : nil } ?? ""
    }

    /// The member `key`, or nil.
    package func value(_ key: String) -> JSONValue? { members[key] }

    /// A string member (nil when absent or null).
    package func string(_ key: String) throws(VouchError) -> String? {
        guard let v = members[key], v != .null else { return nil }
        guard let s = v.stringValue else { throw SpecObject.invalid("\(path).\(key) must be a string") }
        return s
    }

    /// A number member.
    package func number(_ key: String) throws(VouchError) -> Double? {
        guard let v = members[key], v != .null else { return nil }
        guard case .number(let n) = v else { throw SpecObject.invalid("\(path).\(key) must be a number") }
        return n
    }

    /// A whole-number member.
    package func int(_ key: String) throws(VouchError) -> Int? {
        guard let n = try number(key) else { return nil }
        guard let i = Int(exactly: n) else { throw SpecObject.invalid("\(path).\(key) must be a whole number") }
        return i
    }

    /// A boolean member.
    package func bool(_ key: String) throws(VouchError) -> Bool? {
        guard let v = members[key], v != .null else { return nil }
        guard case .bool(let b) = v else { throw SpecObject.invalid("\(path).\(key) must be true or false") }
        return b
    }

    /// An array-of-strings member.
    package func strings(_ key: String) throws(VouchError) -> [String]? {
        guard let v = members[key], v != .null else { return nil }
        guard let a = v.arrayValue, a.allSatisfy({ $0.stringValue != nil }) else {
            throw SpecObject.invalid("\(path).\(key) must be an array of strings")
        }
        return a.compactMap(\.stringValue)
    }

    /// A string member that must be one of an enumeration's raw values.
    package func choice<T: RawRepresentable & CaseIterable>(_ key: String, _ type: T.Type) throws(VouchError) -> T? where T.RawValue == String {
        guard let raw = try string(key) else { return nil }
        guard let value = T(rawValue: raw) else {
            let known = T.allCases.map(\.rawValue).joined(separator: ", ")
            throw SpecObject.invalid("\(path).\(key): unknown value '\(raw)' (one of: \(known))")
        }
        return value
    }
}

/// Levenshtein distance, case-insensitive: for "did you mean" hints.
package func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a.lowercased()), b = Array(b.lowercased())
    guard !a.isEmpty else { return b.count }
    var row = Array(0...b.count)
    for i in 1...a.count {
        var prev = row[0]
        row[0] = i
        for j in stride(from: 1, through: b.count, by: 1) {
            let cur = row[j]
            row[j] = min(row[j] + 1, row[j - 1] + 1, prev + (a[i - 1] == b[j - 1] ? 0 : 1))
            prev = cur
        }
    }
    return row[b.count]
}
