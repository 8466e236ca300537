import Foundation
import Glibc
import VouchSupport

/// What the host must offer to run containers, checked before anything
/// starts so the error says what is missing rather than how nspawn died.
enum NspawnHost {
    /// Checks the host and, unless nil (a start script brings its own
    /// root), the root filesystem to boot.
    /// - Throws: `VouchError.unsupported` naming the missing piece and the fix.
    static func check(rootDirectory: String?, machine: String) throws(VouchError) {
        guard ChildProcess.resolve("systemd-nspawn") != nil else {
            throw VouchError(.unsupported, "systemd-nspawn is not installed: apt-get install systemd-container (scripts/setup does)",
                             machine: machine)
        }
        guard ChildProcess.resolve("nsenter") != nil else {
            throw VouchError(.unsupported, "nsenter is not installed (util-linux)", machine: machine)
        }
        guard getuid() == 0 else {
            throw VouchError(.unsupported, "the nspawn backend needs root (systemd-nspawn creates namespaces and mounts)",
                             machine: machine)
        }
        if let rootDirectory { try checkRoot(rootDirectory, machine: machine) }
    }

    private static func checkRoot(_ rootDirectory: String, machine: String) throws(VouchError) {
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: rootDirectory, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw VouchError(.missingImage, "root filesystem directory \(rootDirectory) does not exist", machine: machine)
        }
        let inits = ["/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/sbin/init"]
        guard inits.contains(where: { fm.fileExists(atPath: rootDirectory + $0) }) else {
            throw VouchError(.missingImage, "\(rootDirectory) has no init (\(inits.joined(separator: ", "))): the nspawn backend boots systemd",
                             machine: machine)
        }
        guard fm.fileExists(atPath: rootDirectory + "/bin/bash") || fm.fileExists(atPath: rootDirectory + "/usr/bin/bash") else {
            throw VouchError(.missingImage, "\(rootDirectory) has no bash, which the guest shell needs", machine: machine)
        }
        guard (try? String(contentsOfFile: "/proc/filesystems", encoding: .utf8))?.contains("overlay") == true
                || fm.fileExists(atPath: "/sys/module/overlay") || moduleAvailable("overlay")
        else {
            throw VouchError(.unsupported, "the kernel has no overlayfs, which the container's throwaway root needs",
                             machine: machine)
        }
    }

    private static func moduleAvailable(_ name: String) -> Bool {
        var u = utsname()
        uname(&u)
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return (try? String(contentsOfFile: "/lib/modules/\(release)/modules.dep", encoding: .utf8))?.contains("/\(name).ko") == true
    }

    /// The pid of the container's init under process `root` (the wrapper
    /// that runs nspawn): a child of `systemd-nspawn` that is PID 1 of its
    /// own namespace and has exec'd its init. The wrapper's own PID 1 (nspawn
    /// itself, or `unshare`/`sh` just before that exec) never qualifies.
    /// nil while it is not there (yet).
    static func initPID(under root: pid_t) -> pid_t? {
        var queue = [root]
        var seen = 0
        while let pid = queue.popLast(), seen < 64 {
            seen += 1
            let parentIsNspawn = comm(pid) == "systemd-nspawn"
            for child in children(of: pid) {
                if parentIsNspawn, isNamespaceInit(child) { return child }
                queue.append(child)
            }
        }
        return nil
    }

    private static func comm(_ pid: pid_t) -> String? {
        (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Direct children of `pid`, from every thread's `children` list.
    static func children(of pid: pid_t) -> [pid_t] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        return tasks.flatMap { task -> [pid_t] in
            let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
            return text.split(separator: " ").compactMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        }
    }

    /// The `NSpid:` list of `pid`: its pid in each PID namespace, outermost first.
    static func namespacePIDs(_ pid: pid_t) -> [pid_t] {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") })
        else { return [] }
        return line.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst().compactMap { pid_t($0) }
    }

    /// The host pid of the process below `root` that the PID namespace
    /// `root` created calls `pid` (a start script run under `unshare --pid`
    /// prints pids of that namespace). nil if there is none (yet).
    static func hostPID(ofNamespacePID pid: pid_t, under root: pid_t) -> pid_t? {
        let level = namespacePIDs(root).count
        guard level > 0 else { return nil }
        var queue = children(of: root)
        var seen = 0
        while let candidate = queue.popLast(), seen < 256 {
            seen += 1
            let ids = namespacePIDs(candidate)
            if ids.count > level, ids[level] == pid { return candidate }
            queue += children(of: candidate)
        }
        return nil
    }

    private static func isNamespaceInit(_ pid: pid_t) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let nspid = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") })
        else { return false }
        let ids = nspid.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst()
        guard ids.count >= 2, ids.last == "1" else { return false }
        let name = comm(pid)
        return name != nil && name != "systemd-nspawn"
    }

    /// Where systemd-nspawn keeps a directory per running container (for
    /// `machinectl bind`); with `--register=no` nobody removes it afterwards.
    package static let propagationRoot = "/run/systemd/nspawn/propagate"

    /// The machine name of the running systemd-nspawn `pid`, from its command
    /// line (`--machine`/`-M`, else the root directory's name, as nspawn does).
    static func machineName(ofNspawn pid: pid_t) -> String? {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
        let args = data.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        var directory: String?
        for (i, arg) in args.enumerated() {
            let next = i + 1 < args.count ? args[i + 1] : nil
            if arg.hasPrefix("--machine=") { return String(arg.dropFirst("--machine=".count)) }
            if arg == "--machine" || arg == "-M" { return next }
            if arg.hasPrefix("-M") { return String(arg.dropFirst(2)) }
            if arg.hasPrefix("--directory=") { directory = String(arg.dropFirst("--directory=".count)) }
            if arg == "--directory" || arg == "-D" { directory = next }
        }
        return directory.map { ($0 as NSString).lastPathComponent }
    }

    /// Removes the directory nspawn kept for container `machineName`, once
    /// the container is gone.
    static func removePropagationDirectory(machineName: String) {
        try? FileManager.default.removeItem(atPath: propagationRoot + "/" + machineName)
    }

    /// Waits (at most `seconds`) until none of `pids` is alive (zombies
    /// count as gone). The container dies asynchronously once the wrapper
    /// is killed: its PID namespace is torn down after the wrapper is reaped.
    static func waitGone(_ pids: [pid_t], seconds: Double) async {
        let deadline = Deadline(seconds: seconds)
        while !deadline.hasPassed, pids.contains(where: alive) {
            // Teardown calls this: it must finish even in a cancelled task.
            try? await Task.sleep(for: .milliseconds(10))
            if Task.isCancelled { usleep(10_000) }
        }
    }

    private static func alive(_ pid: pid_t) -> Bool {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return false }
        return !status.contains("State:\tZ")
    }

    /// The parent of `pid` (for the nspawn process above a container's init).
    static func parent(of pid: pid_t) -> pid_t? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("PPid:") })
        else { return nil }
        return pid_t(line.dropFirst(5).trimmingCharacters(in: .whitespaces))
    }
}
