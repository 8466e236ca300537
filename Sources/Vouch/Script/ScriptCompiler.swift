internal import CVouch
import Foundation
import Glibc
import VouchBackends
import VouchSupport

/// Compiles Swift test scripts against the Vouch library, caching by content.
///
/// The script becomes an executable linked against libVouch.so: its
/// top-level code is the body of a closure in which every
/// machine is a `let` named after its node (`machine` too when there is only
/// one), plus `driver` and `vlans` (the VLAN numbers). `#sourceLocation` keeps compiler errors and runtime
/// failures pointing at the script's own file and lines.
public struct ScriptCompiler: Sendable {
    /// Where compiled scripts are cached.
    public var cacheDirectory: URL
    /// The compiler (`$VOUCH_SWIFTC`, else `swiftc` from PATH).
    public var swiftc: String

    /// A compiler caching in `cacheDirectory` (default `$XDG_CACHE_HOME` or `~/.cache`, `vouch/scripts`).
    public init(cacheDirectory: URL? = nil) {
        let env = ProcessInfo.processInfo.environment
        let base = env["XDG_CACHE_HOME"].map { URL(fileURLWithPath: $0) }
            ?? FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache")
        self.cacheDirectory = cacheDirectory ?? base.appendingPathComponent("vouch/scripts")
        self.swiftc = env["VOUCH_SWIFTC"] ?? "swiftc"
    }

    /// The generated source for `script` with `machines` bound.
    public static func wrap(script: String, path: String, machines: [String]) -> String {
        // `import` is only valid at file scope: hoist imports out of the body,
        // leaving blank lines so line numbers stay the script's own.
        var imports: [String] = []
        let body = script.split(separator: "\n", omittingEmptySubsequences: false).map { line -> Substring in
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("import ") || trimmed.hasPrefix("@testable import ") {
                imports.append(trimmed)
                return ""
            }
            return line
        }.joined(separator: "\n")
        var out = "import Vouch\nimport Foundation\n" + imports.joined(separator: "\n") + "\n"
        out += "@main\nstruct VouchTestScript {\n    static func main() async {\n"
        out += "        await ScriptRunner.main { driver in\n"
        // Backticks let a node be named like a keyword (`class`).
        for m in machines {
            let v = NodeNames.variableName(for: m)
            out += "            let `\(v)` = try driver.machine(\"\(m)\"); _ = `\(v)`\n"
        }
        out += "            let vlans = driver.network.vlans; _ = vlans\n"
        if machines.count == 1, NodeNames.variableName(for: machines[0]) != "machine" {
            out += "            let machine = try driver.machine(\"\(machines[0])\"); _ = machine\n"
        }
        out += "#sourceLocation(file: \"\(path.replacingOccurrences(of: "\"", with: "\\\""))\", line: 1)\n"
        out += body
        out += "\n#sourceLocation()\n        }\n    }\n}\n"
        return out
    }

    /// Type-checks and compiles `script`, or returns the cached build.
    /// - Returns: the test executable, and whether it came from the cache.
    /// - Throws: `VouchError.invalidSpec` with the compiler's diagnostics
    ///   (pointing at the script's lines), `.spawnFailed` without a compiler.
    public func compile(script url: URL, machines: [String]) async throws(VouchError) -> (library: URL, cached: Bool) {
        guard let source = try? String(contentsOf: url, encoding: .utf8) else {
            throw VouchError(.invalidSpec, "cannot read test script \(url.path)", cause: SystemCallError("open \(url.path)"))
        }
        let library = try Self.libraryLocation()
        let wrapped = Self.wrap(script: source, path: url.path, machines: machines)
        let identity = wrapped + "\n" + library.identity
        let key = String(fnv1a(identity), radix: 16) + String(fnv1a(String(identity.reversed())), radix: 16)
        let output = cacheDirectory.appendingPathComponent("script-\(key)")
        if FileManager.default.fileExists(atPath: output.path) { return (output, true) }

        let work = cacheDirectory.appendingPathComponent("build-\(key)-\(getpid())")
        let sourceFile = work.appendingPathComponent("script.swift")
        try vouching("cannot write the script's build directory \(work.path)") {
            try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
            try wrapped.write(to: sourceFile, atomically: true, encoding: .utf8)
        }
        defer { try? FileManager.default.removeItem(at: work) }
        let partial = work.appendingPathComponent("script")
        var args = [
            "-parse-as-library", "-module-name", "VouchScript", "-Onone", "-swift-version", "6",
            "-I", library.modules, "-L", library.directory, "-lVouch",
            "-Xlinker", "-rpath", "-Xlinker", library.directory,
            "-o", partial.path, sourceFile.path,
        ]
        if let map = library.cModuleMap { args += ["-Xcc", "-fmodule-map-file=\(map)"] }
        let (status, compilerOutput) = try await ChildProcess.run(swiftc, args, workingDirectory: work.path, timeout: 600)
        guard status == .exited(0) else {
            let diagnostics = compilerOutput.split(separator: "\n")
                .filter { !$0.contains(sourceFile.path) || $0.contains(": error") }
                .joined(separator: "\n")
            throw VouchError(.invalidSpec, "test script \(url.path) does not compile", outputTail: tail(diagnostics, lines: 40))
        }
        try? FileManager.default.removeItem(at: output)
        try vouching("cannot store the compiled script in \(output.path)") { try FileManager.default.moveItem(at: partial, to: output) }
        return (output, false)
    }

    struct LibraryLocation {
        let directory: String
        let modules: String
        let cModuleMap: String?
        /// Changes whenever the library is rebuilt, so stale scripts are recompiled.
        let identity: String
    }

    /// Finds libVouch.so (the copy this process runs) and its module files.
    static func libraryLocation() throws(VouchError) -> LibraryLocation {
        guard let name = vouch_library_path() else {
            throw VouchError(.other, "cannot locate the Vouch library")
        }
        let lib = URL(fileURLWithPath: String(cString: name)).resolvingSymlinksInPath()
        let dir = lib.deletingLastPathComponent().path
        let fm = FileManager.default
        let candidates = [dir + "/Modules", dir + "/vouch/Modules", dir]
        guard let modules = candidates.first(where: { fm.fileExists(atPath: $0 + "/Vouch.swiftmodule") }) else {
            throw VouchError(.other, "no Vouch.swiftmodule next to \(lib.path) (looked in \(candidates.joined(separator: ", ")))")
        }
        let maps: [String?] = [
            dir + "/CVouch.modulemap",
            ImageStore.sourceCheckout?.appendingPathComponent("Sources/CVouch/include/module.modulemap").path,
        ]
        let map = maps.compactMap { $0 }.first { fm.fileExists(atPath: $0) }
        let attrs = try? fm.attributesOfItem(atPath: lib.path)
        let stamp = "\(lib.path) \((attrs?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0) \(attrs?[.size] ?? 0)"
        return LibraryLocation(directory: dir, modules: modules, cModuleMap: map, identity: stamp)
    }
}

func fnv1a(_ s: String) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    return h
}
