/// How `sendChars` types each character: QEMU key names, with punctuation
/// as PC scancodes (set 1) so no keymap can get in the way.
enum KeyNames {
    /// The key combination that types `character`, e.g. `shift-a` for "A";
    /// nil for a character no key on a US keyboard types.
    static func combination(for character: Character) -> String? {
        if let named = special[character] { return named }
        guard character.isASCII, let ascii = character.asciiValue else { return nil }
        switch ascii {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return String(character)
        case UInt8(ascii: "A")...UInt8(ascii: "Z"):
            return "shift-" + character.lowercased()
        default:
            return nil
        }
    }

    private static let special: [Character: String] = {
        var table: [Character: String] = [" ": "spc", "\n": "ret", "\t": "tab"]
        // Unshifted and shifted characters of each scancode.
        let pairs: [(UInt8, Character, Character?)] = [
            (0x02, "1", "!"), (0x03, "2", "@"), (0x04, "3", "#"), (0x05, "4", "$"), (0x06, "5", "%"),
            (0x07, "6", "^"), (0x08, "7", "&"), (0x09, "8", "*"), (0x0A, "9", "("), (0x0B, "0", ")"),
            (0x0C, "-", "_"), (0x0D, "=", "+"), (0x1A, "[", "{"), (0x1B, "]", "}"), (0x27, ";", ":"),
            (0x28, "'", "\""), (0x29, "`", "~"), (0x2B, "\\", "|"), (0x33, ",", "<"), (0x34, ".", ">"),
            (0x35, "/", "?"),
        ]
        for (code, plain, shifted) in pairs {
            let hex = "0x" + String(code, radix: 16, uppercase: true).leftPadded(to: 2)
            if !plain.isNumber { table[plain] = hex }
            if let shifted { table[shifted] = "shift-" + hex }
        }
        return table
    }()
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
