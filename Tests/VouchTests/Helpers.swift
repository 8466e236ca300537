import Foundation
import Glibc
import Synchronization
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

/// A fresh private directory under /tmp, removed by `removeTree`.
func makeTempDirectory(_ prefix: String = "vouch-unit") -> String {
    var template = Array("/tmp/\(prefix)-XXXXXX".utf8CString)
    let dir = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
    precondition(dir != nil, "mkdtemp failed")
    return String(cString: dir!)
}

func removeTree(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}

/// A machine context under `dir`, logging to nowhere.
func makeContext(name: String = "guest", in dir: String) -> MachineContext {
    let log = TestLog(quiet: true)
    return MachineContext(
        name: name, stateDirectory: dir + "/vm-state-\(name)", sharedDirectory: dir + "/shared-xchg",
        log: log, console: Console(machine: name, log: log, file: URL(fileURLWithPath: dir + "/console-\(name).log")))
}

extension GuestShell {
    /// `run` with a timeout in seconds, as most tests want it.
    func run(_ command: String, timeout: Double) async throws(VouchError) -> CommandResult {
        try await run(command, until: Deadline(seconds: timeout))
    }

    /// `connect` with a timeout in seconds.
    func connect(timeout: Double = 15) async throws(VouchError) {
        try await connect(until: Deadline(seconds: timeout))
    }
}

/// Starts a PTY fake guest, connects a `GuestShell` to it, runs `body`, and
/// always stops the guest and removes its directories.
func withFakeShell<T: Sendable>(
    options: PTYShellBackend.Options = .init(),
    _ body: (GuestShell, PTYShellBackend) async throws -> T
) async throws -> T {
    let dir = makeTempDirectory()
    let backend = PTYShellBackend(context: makeContext(in: dir), options: options)
    do {
        let channel = try await backend.start()
        let shell = GuestShell(machine: "guest", channel: channel)
        try await shell.connect(timeout: 15)
        let result = try await body(shell, backend)
        await backend.stop(keepState: false)
        removeTree(dir)
        return result
    } catch {
        await backend.stop(keepState: false)
        removeTree(dir)
        throw error
    }
}

/// Counts how often a backend was made.
final class Counter: Sendable {
    private let value = Mutex(0)
    func increment() { value.withLock { $0 += 1 } }
    var count: Int { value.withLock { $0 } }
}

/// A `Machine` on the PTY fake, as the Driver would build it.
struct FakeMachine: Sendable {
    let machine: Machine
    let context: MachineContext
    let directory: String
    let outputDirectory: URL
    let backendsMade: Counter
    let backends: FakeMachineBackends

    /// The most recently made backend.
    var backend: PTYShellBackend? { backends.list.withLock { $0.last } }

    func release() async {
        await machine.release(keepState: false)
        removeTree(directory)
    }
}

func makeFakeMachine(
    name: String = "guest", bootTimeout: Double = 15, options: PTYShellBackend.Options = .init()
) -> FakeMachine {
    let dir = makeTempDirectory()
    let context = makeContext(name: name, in: dir)
    try? FileManager.default.createDirectory(atPath: context.sharedDirectory, withIntermediateDirectories: true)
    let counter = Counter()
    let output = URL(fileURLWithPath: dir + "/out")
    let made = FakeMachineBackends()
    let machine = Machine(
        context: context, backendName: "pty-fake", outputDirectory: output, bootTimeout: bootTimeout, readyUnit: nil,
        makeBackend: { ctx in
            counter.increment()
            let backend = PTYShellBackend(context: ctx, options: options)
            made.list.withLock { $0.append(backend) }
            return backend
        })
    return FakeMachine(machine: machine, context: context, directory: dir, outputDirectory: output,
                       backendsMade: counter, backends: made)
}

final class FakeMachineBackends: Sendable {
    let list = Mutex<[PTYShellBackend]>([])
}

/// Runs `body` with a fake machine and always releases it.
func withFakeMachine<T: Sendable>(
    name: String = "guest", bootTimeout: Double = 15, options: PTYShellBackend.Options = .init(),
    _ body: (FakeMachine) async throws -> T
) async throws -> T {
    let fake = makeFakeMachine(name: name, bootTimeout: bootTimeout, options: options)
    do {
        let result = try await body(fake)
        await fake.release()
        return result
    } catch {
        await fake.release()
        throw error
    }
}

/// Runs a host program to completion and returns its status and stdout.
func runHost(_ program: String, _ arguments: [String], environment: [String: String]? = nil) async throws -> (status: VouchSupport.ExitStatus, stdout: [UInt8]) {
    let process = try ChildProcess(program, arguments, environment: environment)
    let out = BytesCollector()
    let err = BytesCollector()
    async let o: Void = out.drain(process.stdout!.queue)
    async let e: Void = err.drain(process.stderr!.queue)
    let status = try await process.waitForExit()
    _ = await (o, e)
    return (status, out.bytes)
}

/// Collects a byte stream exactly (no UTF-8 decoding).
final class BytesCollector: Sendable {
    private let data = Mutex<[UInt8]>([])
    func drain(_ queue: ByteQueue) async {
        while let chunk = try? await queue.next() { data.withLock { $0.append(contentsOf: chunk) } }
    }
    var bytes: [UInt8] { data.withLock { $0 } }
}

/// Whether the fake guest gets a private /tmp with /tmp/shared.
let isolation: @Sendable () async throws -> Bool = { await PTYShellBackend.isolationAvailable() }

/// Measures `body` in seconds.
func elapsed(_ body: () async throws -> Void) async rethrows -> Double {
    let start = ContinuousClock.now
    try await body()
    return (ContinuousClock.now - start).seconds
}

/// Asserts `body` throws a `VouchError` and returns it.
@discardableResult
func expectVouchError(
    _ kind: VouchError.Kind? = nil, sourceLocation: Testing.SourceLocation = #_sourceLocation,
    _ body: () async throws -> Void
) async -> VouchError? {
    do {
        try await body()
        Issue.record("expected a VouchError\(kind.map { " (\($0))" } ?? ""), but nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch let error as VouchError {
        if let kind { #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation) }
        return error
    } catch {
        Issue.record("expected a VouchError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        return nil
    }
}


