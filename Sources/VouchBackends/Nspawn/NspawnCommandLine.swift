import Foundation
import VouchSupport

/// The `systemd-nspawn` and `nsenter` command lines of a container machine,
/// kept apart from the process handling so unit tests can check them.
struct NspawnCommandLine: Sendable, Equatable {
    /// The root filesystem; never written (`--volatile=overlay`).
    var rootDirectory: String
    var hostname: String
    /// Unique per container: nspawn keys its overlay's propagation directory
    /// by machine name, so two containers of one image must differ.
    var machineName: String
    var sharedDirectory: String
    /// File with `vouch.ip=`/`vouch.hosts=`, seen as /etc/vouch/cmdline.
    var networkParametersFile: String?
    /// Container ends of the veth pairs, moved into the container.
    var interfaces: [String] = []
    var extraArgs: [String] = []

    /// Arguments of `systemd-nspawn`.
    ///
    /// `--register=no --keep-unit` avoid machined and a transient scope, so
    /// this works where PID 1 is not systemd (TEST-HOST.md).
    /// `--volatile=overlay` puts a tmpfs over the root: the image stays pristine.
    func arguments() -> [String] {
        var args = [
            "--quiet", "--register=no", "--keep-unit", "--boot", "--volatile=overlay", "--console=passive",
            "--setenv=SYSTEMD_COLORS=0",
            "--directory=\(rootDirectory)", "--machine=\(machineName)", "--hostname=\(hostname)",
            "--bind=\(sharedDirectory):/tmp/shared",
        ]
        if let networkParametersFile { args.append("--bind-ro=\(networkParametersFile):/etc/vouch/cmdline") }
        if interfaces.isEmpty {
            args.append("--private-network")
        } else {
            args += interfaces.map { "--network-interface=\($0)" }
        }
        // Arguments after the options go to the container's systemd, which
        // reads them as its kernel command line (its /etc/hostname would win
        // over --hostname otherwise).
        return args + extraArgs + ["systemd.hostname=\(hostname)"]
    }

    /// The program and arguments that run nspawn (`args`) so that nothing
    /// outlives Vouch: nspawn is PID 1 of a PID namespace whose creator
    /// (`unshare --kill-child`, itself killed with Vouch by the parent-death
    /// signal) takes it down, and with it the nested container. A container's
    /// init does not die with nspawn otherwise.
    ///
    /// With `networkNamespace`, nspawn runs inside the test's network
    /// namespace (the caller puts nsenter in front). nspawn looks interfaces
    /// up in /sys/class/net, which shows the namespace that mounted sysfs: so
    /// it gets its own sysfs there, as `ip netns exec` does; read-only, so
    /// nspawn does not wait for udev (not running there) to initialise veths.
    ///
    /// `program` is what runs there: nspawn, or a start script that execs it.
    static func wrapped(_ args: [String], networkNamespace: Bool, program: String = "systemd-nspawn") -> [String] {
        let setup = networkNamespace ? remountSys + " && " : ""
        return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--mount", "--propagation", "private", "--",
                "sh", "-c", setup + "exec \"$0\" \"$@\"", program] + args
    }

    /// Mounts a sysfs of the current network namespace over /sys, keeping
    /// the host's cgroup mounts (nspawn needs them), parked on /mnt meanwhile
    /// (the mount namespace is private, so the host never sees it).
    static let remountSys =
        "mount --rbind /sys/fs/cgroup /mnt && mount -t sysfs -o ro sysfs /sys && mount --move /mnt /sys/fs/cgroup"

    /// A valid, unique machine name for node `name` (letters, digits, '-').
    static func machineName(for name: String, token: String) -> String {
        let safe = String(name.map { $0.isASCII && ($0.isLetter || $0.isNumber) ? $0 : "-" })
        return String("vouch-\(token)-\(safe)".prefix(64))
    }

    /// Host and container ends of the veth for node `node` on `vlan` (at most 15 characters).
    static func vethNames(node: Int, vlan: Int) -> (host: String, container: String) {
        ("vh\(node)v\(vlan)", "vc\(node)v\(vlan)")
    }

    /// `vouch.ip=` for the container's veths only (no port-forwarding card,
    /// which containers do not have), plus the test's `vouch.hosts=`.
    static func networkParameters(nics: [NetworkPlan.NIC], planParameters: String) -> String {
        var params: [String] = []
        if !nics.isEmpty { params.append("vouch.ip=" + nics.map { "\($0.mac)@\($0.ipv4)/24@\($0.ipv6)/64" }.joined(separator: ",")) }
        params += planParameters.split(separator: " ").map(String.init).filter { $0.hasPrefix("vouch.hosts=") }
        return params.joined(separator: " ")
    }

    /// What the `nsenter` session runs in the container: wait for `readyUnit`,
    /// then become a backdoor shell on the pty, like the VM's backdoor.service.
    /// While waiting it reports the system state to stderr (the console log)
    /// every 2 s, so a boot timeout shows what it last saw.
    static let sessionScript = """
        stty raw -echo
        n=0
        until systemctl is-active --quiet "$1" 2>/dev/null; do
          if [ $((n % 40)) = 0 ]; then
            echo "vouch: waiting for $1 (system: $(systemctl is-system-running 2>&1); failed: $(systemctl --failed --no-legend --plain 2>/dev/null | cut -d' ' -f1 | tr '\\n' ' '))" >&2
          fi
          n=$((n + 1))
          sleep 0.05
        done
        echo "Spawning backdoor root shell..."
        cd /tmp
        PS1="" exec bash --norc /dev/tty
        """

    /// Detaches the session from nsenter inside the container: `setsid -f`
    /// forks a child of the container's init with the pty (our stdout) as
    /// stdin and controlling terminal, and nsenter exits. Why: systemd's
    /// shutdown stops every process of the container (SIGSTOP, then SIGCONT);
    /// nsenter, outside it, would see its child stop, stop itself for ever and
    /// never reap the shell, hanging the container's reboot. As a session
    /// leader on the pty, the shell also gets ^C for its commands.
    static let detach = "exec setsid -f -c /bin/bash --norc --noprofile -c \"$1\" vouch-backdoor \"$2\" <&1"

    /// `nsenter` arguments for a session in the container whose init is `initPID`.
    static func sessionArguments(initPID: pid_t, readyUnit: String) -> [String] {
        ["-t", "\(initPID)", "-a", "--", "/bin/sh", "-c", detach, "vouch-session", sessionScript, readyUnit]
    }
}
