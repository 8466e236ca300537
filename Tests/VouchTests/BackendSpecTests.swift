import Foundation
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

@Suite struct BackendSpecTests {
    func parse(_ text: String) throws -> TestSpec {
        try TestSpec.parse(JSONValue.parse(Array(text.utf8)))
    }

    func invalidMessage(_ text: String) -> String? {
        do {
            _ = try parse(text)
            return nil
        } catch let error as VouchError {
            return error.kind == .invalidSpec ? error.message : nil
        } catch {
            return nil
        }
    }

    @Test func nspawnMachineDefaultsToTheSystemdImage() throws {
        let spec = try parse("""
            { "network": "tap", "machines": { "c": { "backend": "nspawn", "readyUnit": "nginx.service",
              "nspawnArgs": ["--capability=CAP_NET_ADMIN"], "vlans": [1, 2] } } }
            """)
        let m = spec.machines[0]
        #expect(m.backend == "nspawn" && m.nspawn?.image == "systemd" && m.vlans == [1, 2])
        #expect(m.nspawn?.readyUnit == "nginx.service")
        #expect(m.nspawn?.extraArgs == ["--capability=CAP_NET_ADMIN"])
    }

    @Test func nspawnRejectsQEMUKeysAndVDEVLANs() throws {
        #expect(invalidMessage(#"{ "machines": { "c": { "backend": "nspawn", "memory": 256 } } }"#)?
            .contains("machines.c.memory: not used by the nspawn backend") == true)
        #expect(invalidMessage(#"{ "machines": { "c": { "backend": "nspawn" } } }"#)?
            .contains(#"machines.c: the nspawn backend needs "network": "tap""#) == true)
        #expect(try parse(#"{ "machines": { "c": { "backend": "nspawn", "vlans": [] } } }"#).machines[0].vlans == [])
        #expect(invalidMessage(#"{ "network": "tap", "machines": { "c": { "backend": "nspawn", "image": "systemd", "rootDirectory": "/x" } } }"#)?
            .contains("only one of image, rootDirectory or startScript") == true)
    }

    @Test func nspawnMachineWithAStartScript() throws {
        let m = try parse(#"{ "machines": { "c": { "backend": "nspawn", "startScript": "/s/run-c-nspawn", "vlans": [] } } }"#).machines[0]
        #expect(m.nspawn?.startScript == "/s/run-c-nspawn" && m.nspawn?.image == nil)
        #expect(invalidMessage(#"{ "machines": { "c": { "backend": "nspawn", "startScript": "/s", "image": "systemd", "vlans": [] } } }"#)?
            .contains("only one of image") == true)
        #expect(invalidMessage(#"{ "machines": { "c": { "backend": "nspawn", "startScript": "/s", "nspawnArgs": ["-q"], "vlans": [] } } }"#)?
            .contains("runs systemd-nspawn itself") == true)
        #expect(try parse(#"{ "machines": { "c": { "backend": "nspawn", "startScript": "/s" } } }"#).machines[0].vlans == [])
        #expect(invalidMessage(#"{ "network": "tap", "machines": { "c": { "backend": "nspawn", "startScript": "/s", "vlans": [1] } } }"#)?
            .contains("sets up its own network") == true)
    }

    @Test func sshMachineSettings() throws {
        let spec = try parse("""
            { "machines": { "h": { "backend": "ssh", "host": "db.example", "port": 2222, "user": "ci",
              "identityFile": "/k", "knownHosts": "accept-new", "knownHostsFile": "/kh", "allowPowerControl": true,
              "sshArgs": ["-o", "ProxyJump=gw"] } } }
            """)
        let s = try #require(spec.machines[0].ssh)
        #expect(s.host == "db.example" && s.port == 2222 && s.user == "ci" && s.identityFile == "/k")
        #expect(s.knownHosts == .acceptNew && s.knownHostsFile == "/kh" && s.allowPowerControl)
        #expect(spec.machines[0].vlans == [])
    }

    @Test func sshSpecErrorsNameMachineAndField() {
        #expect(invalidMessage(#"{ "machines": { "h": { "backend": "ssh" } } }"#)?.contains("machines.h.host") == true)
        #expect(invalidMessage(#"{ "machines": { "h": { "backend": "ssh", "host": "x", "knownHosts": "maybe" } } }"#)?
            .contains("machines.h.knownHosts: unknown value 'maybe' (one of: strict, accept-new, off)") == true)
        #expect(invalidMessage(#"{ "machines": { "h": { "backend": "ssh", "host": "x", "port": 70000 } } }"#)?
            .contains("machines.h.port") == true)
        #expect(invalidMessage(#"{ "machines": { "h": { "backend": "ssh", "host": "x", "image": "systemd" } } }"#)?
            .contains("machines.h.image: not used by the ssh backend") == true)
        #expect(invalidMessage(#"{ "machines": { "h": { "backend": "ssh", "host": "x", "allowPowerControl": "yes" } } }"#)?
            .contains("allowPowerControl must be true or false") == true)
        #expect(invalidMessage(#"{ "machines": { "h": { "backend": "ssh", "host": "x", "usr": "me" } } }"#)?
            .contains("did you mean user?") == true)
        #expect(invalidMessage(#"{ "machines": { "h": { "backend": "lxc" } } }"#)?.contains("known: qemu, nspawn, ssh") == true)
    }

    @Test func nspawnCommandLine() {
        var c = NspawnCommandLine(rootDirectory: "/img/rootfs", hostname: "web", machineName: "vouch-ab-web",
                                  sharedDirectory: "/run/x/shared", networkParametersFile: "/run/x/net",
                                  interfaces: ["vc1v1", "vc1v2"], extraArgs: ["--capability=all"])
        let args = c.arguments()
        for expected in ["--register=no", "--keep-unit", "--boot", "--volatile=overlay", "--directory=/img/rootfs",
                         "--machine=vouch-ab-web", "--hostname=web", "--bind=/run/x/shared:/tmp/shared",
                         "--bind-ro=/run/x/net:/etc/vouch/cmdline", "--network-interface=vc1v1", "--network-interface=vc1v2"] {
            #expect(args.contains(expected), "missing \(expected)")
        }
        #expect(!args.contains("--private-network"))
        #expect(Array(args.suffix(2)) == ["--capability=all", "systemd.hostname=web"])
        c.interfaces = []
        #expect(c.arguments().contains("--private-network"))
        #expect(NspawnCommandLine.machineName(for: "a_b", token: "1f") == "vouch-1f-a-b")
        let (host, guest) = NspawnCommandLine.vethNames(node: 254, vlan: 255)
        #expect(host.count <= 15 && guest.count <= 15 && host != guest)
        let wrapped = NspawnCommandLine.wrapped(["--boot"], networkNamespace: true)
        #expect(wrapped.starts(with: ["unshare", "--pid", "--fork", "--kill-child"]))
        #expect(wrapped.last == "--boot" && wrapped.contains { $0.contains("mount -t sysfs") })
        #expect(!NspawnCommandLine.wrapped([], networkNamespace: false).contains { $0.contains("sysfs") })
        let script = NspawnCommandLine.wrapped([], networkNamespace: false, program: "/x/run-ct-nspawn")
        #expect(script.starts(with: ["unshare", "--pid", "--fork", "--kill-child"]) && script.last == "/x/run-ct-nspawn")
    }

    @Test func nspawnStartScriptContract() {
        let env = NspawnStartScript.environment(base: ["PATH": "/bin"], stateDirectory: "/run/m", sharedDirectory: "/run/s")
        #expect(env == ["PATH": "/bin", "RUN_NSPAWN_ROOT_DIR": "/run/m", "RUN_NSPAWN_SHARED_DIR": "/run/s"])
        #expect(NspawnStartScript.nspawnPID(in: "systemd-nspawn's PID is 42") == 42)
        #expect(NspawnStartScript.nspawnPID(in: "systemd-nspawn's PID is soon") == nil)
        #expect(NspawnStartScript.clean("\u{1B}[0;1;39msystemd[1]: Startup finished in 1.2s.\u{1B}[0m\r\r") == "systemd[1]: Startup finished in 1.2s.")
        #expect(NspawnStartScript.isReady("systemd[1]: Startup finished in 259ms."))
        #expect(NspawnStartScript.isReady("<<< Welcome to NixOS 25.05 (x86_64) - console >>>"))
        #expect(!NspawnStartScript.isReady("Startup finished in 259ms (userspace)."))

        let watcher = StartScriptWatcher()
        watcher.feed(Array("systemd-nspawn's PID is 7\r\nWel".utf8))
        #expect(watcher.nspawnPID == 7 && !watcher.ready)
        watcher.feed(Array("come to NixOS!\r\n".utf8))
        #expect(watcher.ready)
        watcher.feed(Array("systemd-nspawn's PID is 9\n".utf8))
        #expect(watcher.nspawnPID == 7, "the first PID line counts")
        watcher.reset()
        #expect(watcher.nspawnPID == nil && !watcher.ready)
    }

    @Test func nspawnNetworkParametersDropTheForwardingCard() throws {
        let plan = try NetworkPlan(machines: [("a", [1]), ("b", [1])])
        let node = try #require(plan.node("a"))
        let params = NspawnCommandLine.networkParameters(
            nics: node.nics, planParameters: plan.kernelParameters(for: "a", forwarding: true))
        #expect(params == "vouch.ip=52:54:00:12:01:01@192.168.1.1/24@2001:db8:1::1/64 "
                + "vouch.hosts=a@192.168.1.1@2001:db8:1::1,b@192.168.1.2@2001:db8:1::2")
    }

    @Test func sshCommandLines() {
        var s = SSHSettings(host: "h")
        s.port = 2222
        s.user = "ci"
        s.identityFile = "/k"
        s.extraArgs = ["-o", "ProxyJump=gw"]
        let c = SSHCommandLine(settings: s, controlPath: "/run/m/cm")
        let common = c.common()
        #expect(common.contains("BatchMode=yes") && common.contains("ControlPath=/run/m/cm"))
        #expect(common.contains("StrictHostKeyChecking=yes"))
        #expect(common.joined(separator: " ").contains("-p 2222 -l ci -i /k -o IdentitiesOnly=yes"))
        #expect(Array(common.suffix(2)) == ["-o", "ProxyJump=gw"])
        #expect(Array(c.master().suffix(5)) == ["-M", "-N", "-o", "ControlPersist=no", "h"])
        let session = c.session(remoteDirectory: "/tmp/vouch-ssh-1")
        #expect(session.contains("-tt") && session.contains("ControlMaster=no"))
        #expect(session.last?.hasPrefix("exec bash --norc --noprofile -c ") == true && session.last?.hasSuffix("'/tmp/vouch-ssh-1'") == true)
        #expect(c.forward(hostPort: 8080, guestPort: 80).contains("127.0.0.1:8080:127.0.0.1:80"))

        var off = s
        off.knownHosts = .off
        off.knownHostsFile = "/kh"
        let o = SSHCommandLine(settings: off, controlPath: "/cm").common()
        #expect(o.contains("StrictHostKeyChecking=no") && o.contains("UserKnownHostsFile=/dev/null") && !o.contains("UserKnownHostsFile=/kh"))
        var pinned = s
        pinned.knownHosts = .acceptNew
        pinned.knownHostsFile = "/kh"
        let p = SSHCommandLine(settings: pinned, controlPath: "/cm").common()
        #expect(p.contains("StrictHostKeyChecking=accept-new") && p.contains("UserKnownHostsFile=/kh"))
    }

    @Test func sshDiagnosesConnectionFailures() {
        #expect(SSHCommandLine.diagnose("root@x: Permission denied (publickey).").hasPrefix("authentication failed"))
        #expect(SSHCommandLine.diagnose("Host key verification failed.").hasPrefix("the host key was not accepted"))
        #expect(SSHCommandLine.diagnose("@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @").hasPrefix("the host key"))
        #expect(SSHCommandLine.diagnose("ssh: connect to host x port 22: Connection refused") == "the host is unreachable")
        #expect(SSHCommandLine.diagnose("ssh: Could not resolve hostname nope") == "the host is unreachable")
    }
}
