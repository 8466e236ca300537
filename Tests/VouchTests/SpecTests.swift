import Foundation
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchGuest
@testable import VouchSupport
@testable import VouchTesting
@testable import VouchWire

@Suite struct TestSpecTests {
    func parse(_ text: String) throws -> TestSpec {
        try TestSpec.parse(JSONValue.parse(Array(text.utf8)))
    }

    /// Parsing `text` fails with `.invalidSpec` whose message contains every one of `parts`.
    func expectInvalid(_ text: String, _ parts: String..., sourceLocation: Testing.SourceLocation = #_sourceLocation) {
        do {
            _ = try parse(text)
            Issue.record("expected \(text) to be rejected", sourceLocation: sourceLocation)
        } catch let error as VouchError {
            #expect(error.kind == .invalidSpec, sourceLocation: sourceLocation)
            for part in parts {
                #expect(error.message.contains(part), "\(error.message) should contain \(part)", sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func validSpec() throws {
        let spec = try parse("""
            { "name": "demo", "globalTimeout": 900,
              "machines": { "server": { "image": "systemd", "memory": 1024, "cpus": 2, "qemuArgs": ["-smp", "2"],
                                        "board": "pc", "accel": "tcg", "bootTimeout": 60, "cmdline": "quiet" },
                            "client": {},
                            "a-b_c9": { "kernel": "/k", "initrd": "/i", "disk": "/d" } } }
            """)
        #expect(spec.name == "demo")
        #expect(spec.globalTimeout == 900)
        #expect(spec.machines.map(\.name) == ["a-b_c9", "client", "server"])
        let server = try #require(spec.machines[2].qemu)
        #expect(server.image == "systemd")
        #expect(server.memoryMiB == 1024)
        #expect(server.cpus == 2)
        #expect(server.qemuArgs == ["-smp", "2"])
        #expect(server.board == .pc)
        #expect(server.accelerator == .tcg)
        #expect(spec.machines[2].bootTimeout == 60)
        #expect(server.cmdline == "quiet")
        let kernel = try #require(spec.machines[0].qemu)
        #expect(kernel.image == nil)
        #expect(kernel.kernel == "/k")
        #expect(kernel.initrd == "/i")
        #expect(kernel.disk == "/d")
    }

    @Test func defaults() throws {
        let spec = try TestSpec.parse(["machines": ["zeta": [:], "alpha": ["memory": .null]]], defaultName: "from-file")
        #expect(spec.name == "from-file")
        #expect(spec.globalTimeout == 3600)
        #expect(spec.machines.map(\.name) == ["alpha", "zeta"])
        for m in spec.machines {
            let q = try #require(m.qemu)
            #expect(q.image == "minimal")
            #expect(m.backend == "qemu")
            #expect(q.memoryMiB == 512)
            #expect(q.cpus == 1)
            #expect(m.bootTimeout == 300)
            #expect(q.accelerator == .auto)
            #expect(q.board == nil)
            #expect(q.qemuArgs.isEmpty)
        }
        // The memberwise initialiser sorts too.
        let b = MachineSpec(name: "b", qemu: QEMUSettings()), a = MachineSpec(name: "a", qemu: QEMUSettings())
        #expect(TestSpec(name: "x", machines: [b, a]).machines.map(\.name) == ["a", "b"])
    }

    @Test func unknownKeysSuggestTheRightOne() {
        expectInvalid(#"{"machines": {"server": {"imgae": "minimal"}}}"#, "machines.server.imgae: unknown key", "did you mean image?")
        expectInvalid(#"{"machnes": {"a": {}}}"#, "spec.machnes: unknown key", "did you mean machines?")
        expectInvalid(#"{"globaltimeout": 5, "machines": {"a": {}}}"#, "spec.globaltimeout", "did you mean globalTimeout?")
        expectInvalid(#"{"machines": {"a": {"completelydifferent": 1}}}"#, "machines.a.completelydifferent: unknown key")
        do {
            _ = try parse(#"{"machines": {"a": {"completelydifferent": 1}}}"#)
        } catch let error as VouchError {
            #expect(!error.message.contains("did you mean"), "no far-fetched suggestion: \(error.message)")
        } catch {}
    }

    @Test func wrongTypes() {
        expectInvalid(#"{"machines": {"a": {"memory": "lots"}}}"#, "machines.a.memory must be a number")
        expectInvalid(#"{"machines": {"a": {"memory": 1.5}}}"#, "machines.a.memory must be a whole number")
        expectInvalid(#"{"machines": {"a": {"image": 3}}}"#, "machines.a.image must be a string")
        expectInvalid(#"{"machines": {"a": {"qemuArgs": ["-m", 3]}}}"#, "machines.a.qemuArgs must be an array of strings")
        expectInvalid(#"{"machines": {"a": {"qemuArgs": "-m 3"}}}"#, "machines.a.qemuArgs must be an array of strings")
        expectInvalid(#"{"machines": {"a": "minimal"}}"#, "machines.a must be a JSON object")
        expectInvalid(#"{"globalTimeout": "1h", "machines": {"a": {}}}"#, "spec.globalTimeout must be a number")
        expectInvalid(#"{"name": 5, "machines": {"a": {}}}"#, "spec.name must be a string")
        expectInvalid(#"{"machines": ["a"]}"#, "spec.machines must be an object")
        expectInvalid(#"["a"]"#, "spec must be a JSON object")
        expectInvalid(#"{"machines": {"a": {"board": "q35"}}}"#, "machines.a.board: unknown value 'q35' (one of: microvm, pc)")
        expectInvalid(#"{"machines": {"a": {"accel": "hvf"}}}"#, "machines.a.accel: unknown value 'hvf' (one of: auto, kvm, tcg)")
    }

    @Test func invalidValues() {
        expectInvalid(#"{"machines": {"a": {"backend": "qemuu"}}}"#, "machines.a.backend: unknown backend 'qemuu'", "known: qemu, nspawn, ssh, firecracker")
        expectInvalid(#"{"machines": {"a": {"backend": "firecracker"}}}"#, "the firecracker backend needs \"network\": \"tap\"")
        expectInvalid(#"{"machines": {"a": {"backend": "firecracker", "cpus": 64, "vlans": []}}}"#, "machines.a.cpus: 1 to 32")
        expectInvalid(#"{"name": "x"}"#, "spec.machines must be an object")
        expectInvalid(#"{"globalTimeout": 0, "machines": {"a": {}}}"#, "globalTimeout must be positive")
        expectInvalid(#"{"machines": {"a": {"memory": 16}}}"#, "machines.a.memory: at least 32")
        expectInvalid(#"{"machines": {"a": {"cpus": 0}}}"#, "machines.a.cpus: at least 1")
        expectInvalid(#"{"machines": {"a": {"bootTimeout": -1}}}"#, "machines.a.bootTimeout must be positive")
        expectInvalid(#"{"machines": {"a": {"image": "minimal", "kernel": "/k"}}}"#, "machines.a: give only one of image, kernel or startScript")
        expectInvalid(#"{"machines": {"a": {"startScript": "/s", "kernel": "/k"}}}"#, "give only one of")
    }

    @Test(arguments: ["bad name", "dot.ted", "ünï", "a/b", "semi;colon", "-lead"])
    func invalidMachineNames(_ name: String) throws {
        let json: JSONValue = ["machines": .object([name: [:]])]
        do {
            _ = try TestSpec.parse(json)
            Issue.record("name \(name.debugDescription) was accepted")
        } catch {
            #expect(error.kind == .invalidSpec)
            #expect(error.message.contains("machines.\(name): machine name '\(name)'"), "\(error.message)")
            #expect(error.message.contains("names may only contain ASCII letters (a-z, A-Z), digits (0-9), '-' and '_', starting with a letter or digit"),
                    "\(error.message)")
        }
    }

    @Test func loadNamesTheFile() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let good = URL(fileURLWithPath: dir + "/my-test.json")
        try #"{"machines": {"m": {}}}"#.write(to: good, atomically: true, encoding: .utf8)
        #expect(try TestSpec.load(good).name == "my-test")

        let typo = URL(fileURLWithPath: dir + "/typo.json")
        try #"{"machines": {"m": {"cpu": 2}}}"#.write(to: typo, atomically: true, encoding: .utf8)
        let e1 = try #require(throws: VouchError.self) { try TestSpec.load(typo) }
        #expect(e1.kind == .invalidSpec)
        #expect(e1.message.hasPrefix(typo.path + ": machines.m.cpu: unknown key (did you mean cpus?)"))

        let broken = URL(fileURLWithPath: dir + "/broken.json")
        try #"{"machines": "#.write(to: broken, atomically: true, encoding: .utf8)
        let e2 = try #require(throws: VouchError.self) { try TestSpec.load(broken) }
        #expect(e2.message.contains("\(broken.path) is not valid JSON"))

        let e3 = try #require(throws: VouchError.self) { try TestSpec.load(URL(fileURLWithPath: dir + "/missing.json")) }
        #expect(e3.message.contains("cannot read spec file"))
    }
}

@Suite struct NixpkgsConfigTests {
    @Test func vmsWithStartScripts() throws {
        let config = try NixpkgsConfig.parse([
            "vms": ["server": ["name": "server", "start_script": "/nix/store/abc-run-server-vm"],
                    "client": ["start_script": "/nix/store/def-run-client-vm"]],
            "containers": [:],
            "vlans": [1, 2],
            "global_timeout": 600,
            "enable_ssh_backdoor": false,
            "test_script": "start_all()\nserver.succeed('true')",
        ])
        #expect(config.spec.machines.map(\.name) == ["client", "server"])
        #expect(config.spec.machines.map(\.qemu?.startScript) == ["/nix/store/def-run-client-vm", "/nix/store/abc-run-server-vm"])
        #expect(config.spec.machines.allSatisfy { $0.qemu?.board == .pc && $0.qemu?.image == nil })
        #expect(config.spec.globalTimeout == 600)
        #expect(config.vlans == [1, 2])
        #expect(config.testScript == "start_all()\nserver.succeed('true')")
    }

    @Test func defaultsForOptionalKeys() throws {
        let config = try NixpkgsConfig.parse(["vms": ["m": ["start_script": "/s"]]])
        #expect(config.spec.globalTimeout == 3600)
        #expect(config.vlans.isEmpty)
        #expect(config.testScript == nil)
    }

    @Test func missingStartScript() {
        let error = #expect(throws: VouchError.self) {
            try NixpkgsConfig.parse(["vms": ["server": ["name": "server"]]])
        }
        #expect(error?.kind == .invalidSpec)
        #expect(error?.message.contains("config.vms.server.start_script is missing") == true)
    }

    @Test func wrongTypesNameTheKey() {
        let e1 = #expect(throws: VouchError.self) { try NixpkgsConfig.parse(["vms": ["m": ["start_script": 3]]]) }
        #expect(e1?.message.contains("config.vms.m.start_script must be a string") == true)
        let e2 = #expect(throws: VouchError.self) { try NixpkgsConfig.parse(["vms": ["m": "x"]]) }
        #expect(e2?.message.contains("config.vms.m must be a JSON object") == true)
        let e3 = #expect(throws: VouchError.self) {
            try NixpkgsConfig.parse(["vms": ["m": ["start_script": "/s"]], "global_timeout": "long"])
        }
        #expect(e3?.message.contains("config.global_timeout must be a number") == true)
    }

    @Test func containersWithStartScripts() throws {
        let config = try NixpkgsConfig.parse([
            "vms": ["server": ["name": "server", "start_script": "/nix/store/abc-run-server-vm"]],
            "containers": ["ct": ["name": "ct", "start_script": "/nix/store/def-run-ct-nspawn"]],
        ])
        #expect(config.spec.machines.map(\.name) == ["ct", "server"])
        let ct = config.spec.machines[0]
        #expect(ct.backend == "nspawn" && ct.nspawn?.startScript == "/nix/store/def-run-ct-nspawn")
        #expect(ct.vlans.isEmpty && ct.nspawn?.image == nil && ct.nspawn?.rootDirectory == nil && ct.qemu == nil)
        #expect(config.spec.machines[1].backend == "qemu")
    }

    @Test func onlyContainers() throws {
        let config = try NixpkgsConfig.parse(["vms": [:], "containers": ["c": ["start_script": "/s"]]])
        #expect(config.spec.machines.map(\.name) == ["c"])
        let missing = #expect(throws: VouchError.self) { try NixpkgsConfig.parse(["containers": ["c": ["name": "c"]]]) }
        #expect(missing?.message.contains("config.containers.c.start_script is missing") == true)
    }

    @Test func aVMAndAContainerMayNotShareAName() {
        let error = #expect(throws: VouchError.self) {
            try NixpkgsConfig.parse(["vms": ["a": ["name": "m", "start_script": "/s"]],
                                     "containers": ["b": ["name": "m", "start_script": "/t"]]])
        }
        #expect(error?.kind == .invalidSpec && error?.message.contains("already a machine named 'm'") == true)
    }

    /// nixpkgs tests may have no nodes (`nodes = { }`); a configuration
    /// with neither section is not one at all.
    @Test func noMachines() throws {
        for json: JSONValue in [["vms": [:]], ["vms": [:], "containers": [:]], ["containers": [:]]] {
            #expect(try NixpkgsConfig.parse(json).spec.machines.isEmpty)
        }
        let error = #expect(throws: VouchError.self) { try NixpkgsConfig.parse([:]) }
        #expect(error?.kind == .invalidSpec)
        #expect(error?.message.contains("config.vms and config.containers are missing") == true)
        #expect(try TestSpec.parse(.object(["machines": [:]])).machines.isEmpty)
    }

    @Test func loadNamesTheFile() throws {
        let dir = makeTempDirectory()
        defer { removeTree(dir) }
        let url = URL(fileURLWithPath: dir + "/driver-config.json")
        try #"{"vms": {"m": {}}}"#.write(to: url, atomically: true, encoding: .utf8)
        let error = #expect(throws: VouchError.self) { try NixpkgsConfig.load(url) }
        #expect(error?.message == "\(url.path): config.vms.m.start_script is missing")
    }
}
