/// A growable byte buffer read from the front: consuming advances an index
/// instead of moving the bytes, and the storage is compacted only when the
/// consumed part is large, so taking many small answers out of a big
/// buffer costs O(total), not O(n) per answer.
package struct ByteBuffer {
    private var storage: [UInt8] = []
    private var start = 0

    package init() {}

    /// The unconsumed bytes (indices are positions in the storage).
    package var bytes: ArraySlice<UInt8> { storage[start...] }

    /// Position of the first unconsumed byte.
    package var startIndex: Int { start }

    /// Position after the last byte.
    package var endIndex: Int { storage.count }

    /// Unconsumed byte count.
    package var count: Int { storage.count - start }

    package var isEmpty: Bool { count == 0 }

    /// Appends bytes at the end.
    package mutating func append(_ more: [UInt8]) {
        if start == storage.count {
            storage.removeAll(keepingCapacity: true)
            start = 0
        }
        storage.append(contentsOf: more)
    }

    /// The bytes in `range` (positions as in `bytes`), copied.
    package func copy(_ range: Range<Int>) -> [UInt8] { Array(storage[range]) }

    /// Drops everything before `position`.
    package mutating func consume(upTo position: Int) {
        start = min(max(start, position), storage.count)
        if start == storage.count {
            storage.removeAll(keepingCapacity: storage.capacity <= 1 << 20)
            start = 0
        } else if start > 1 << 20, start > storage.count / 2 {
            storage.removeFirst(start)
            start = 0
        }
    }

    /// Drops everything.
    package mutating func removeAll() {
        storage.removeAll(keepingCapacity: false)
        start = 0
    }

    /// Keeps only the last `n` unconsumed bytes.
    package mutating func keepLast(_ n: Int) {
        if count > n { consume(upTo: storage.count - n) }
    }

    /// The last `n` unconsumed bytes, as text, for messages.
    package func suffixText(_ n: Int) -> String {
        String(decoding: storage[max(start, storage.count - n)...], as: UTF8.self)
    }
}
