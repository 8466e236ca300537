/// Splits a byte stream into lines (without the newline, and without a
/// carriage return before it). Each byte is scanned once, however the
/// stream is chunked.
package struct LineSplitter {
    private var buffer: [UInt8] = []
    /// Where the next line starts.
    private var start = 0
    /// Bytes before this index (from `start`) hold no newline.
    private var scanned = 0

    package init() {}

    /// Adds bytes from the stream.
    package mutating func append(_ bytes: some Collection<UInt8>) {
        if start > 0 && (start == buffer.count || start > 65536) {
            buffer.removeFirst(start)
            scanned -= start
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next complete line, or nil.
    package mutating func next() -> ArraySlice<UInt8>? {
        let from = max(start, scanned)
        guard let newline = buffer[from...].firstIndex(of: UInt8(ascii: "\n")) else {
            scanned = buffer.count
            return nil
        }
        var line = buffer[start..<newline]
        if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
        start = newline + 1
        scanned = start
        return line
    }

    /// Bytes after the last newline.
    package var remainder: ArraySlice<UInt8> { buffer[start...] }

    /// Forgets everything, including a partial line.
    package mutating func reset() {
        buffer.removeAll(keepingCapacity: true)
        start = 0
        scanned = 0
    }
}
