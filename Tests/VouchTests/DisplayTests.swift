import Foundation
import Testing

@testable import Vouch
@testable import VouchBackends
@testable import VouchSupport

/// The display devices and flags QEMU gets, and the key table `sendChars` types with.
@Suite struct DisplayTests {
    func line(_ config: QEMUConfig, environment: [String: String] = [:]) -> [String] {
        var line = QEMUCommandLine(config: config, stateDirectory: "/s", sharedDirectory: "/x", accelerator: .tcg, overlay: nil)
        line.environment = environment
        return line.arguments(hostnameParameter: "h", hostname: "m")
    }

    @Test func graphicsGivesAVGACardAndATabletAndNoWindow() {
        var config = QEMUConfig(boot: .direct(kernel: "/k", initrd: nil, rootDisk: nil, cmdline: ""))
        config.board = .pc
        #expect(!line(config).contains { $0.hasPrefix("VGA") })
        config.graphics = true
        let args = line(config, environment: ["DISPLAY": ":0"])
        #expect(args.contains("VGA,xres=1024,yres=768") && args.contains("usb-tablet,bus=usb.0"))
        #expect(args.firstIndex(of: "-display").map { args[$0 + 1] } == "none")
    }

    @Test func startScriptsGetNographicExactlyWhenTheDriverHasNoDisplay() {
        let config = QEMUConfig(boot: .startScript("/run-x-vm"))
        #expect(line(config).contains("-nographic"))
        #expect(line(config, environment: ["DISPLAY": ""]).contains("-nographic"))
        #expect(!line(config, environment: ["DISPLAY": ":1"]).contains("-nographic"))
        #expect(!line(config, environment: ["WAYLAND_DISPLAY": "wayland-0"]).contains("-nographic"))
        #expect(!line(config).contains("-display"))
    }

    @Test func specRefusesGraphicsWhereThereIsNoPlaceForIt() throws {
        let parse = { (text: String) throws in try TestSpec.parse(JSONValue.parse(Array(text.utf8))) }
        let ok = try parse(#"{"machines": {"a": {"image": "systemd", "graphics": true}}}"#)
        #expect(ok.machines.first?.qemu?.graphics == true)
        for (text, part) in [
            (#"{"machines": {"a": {"graphics": true, "board": "microvm"}}}"#, "no PCI bus for a VGA card"),
            (#"{"machines": {"a": {"graphics": true, "startScript": "/x"}}}"#, "a start script brings its own display"),
            (#"{"machines": {"a": {"graphics": "yes"}}}"#, "graphics"),
        ] {
            let error = #expect(throws: VouchError.self) { _ = try parse(text) }
            #expect(error?.kind == .invalidSpec && error?.message.contains(part) == true, "\(String(describing: error))")
        }
    }

    @Test func charactersTypeAsNixpkgsTableSays() {
        let expected: [Character: String] = [
            "a": "a", "Z": "shift-z", "7": "7", " ": "spc", "\n": "ret", "\t": "tab",
            "-": "0x0C", "_": "shift-0x0C", "!": "shift-0x02", ")": "shift-0x0B", "~": "shift-0x29",
            "\"": "shift-0x28", "/": "0x35", "?": "shift-0x35", "|": "shift-0x2B",
        ]
        for (character, combination) in expected {
            #expect(KeyNames.combination(for: character) == combination, "\(character)")
        }
        #expect(KeyNames.combination(for: "é") == nil)
        #expect(KeyNames.combination(for: "\u{7}") == nil)
    }

    @Test func windowNamesComeFromXwininfoTrees() {
        let tree = """
            xwininfo: Window id: 0x4f5 (the root window) (has no name)

              Root window id: 0x4f5 (the root window) (has no name)
              Parent window id: 0x0 (none)
                 2 children:
                 0x200001 "vouch-term": ("xterm" "XTerm")  484x316+0+0  +0+0
                    1 child:
                    0x200002 (has no name): ()  1x1+-1+-1  +-1+-1
                 0x400007 "twm": ()  1x1+0+0  +0+0
            """
        #expect(Machine.windowNames(inTree: tree) == ["vouch-term", "twm"])
    }
}

@Suite struct OCRTests {
    @Test func aMissingTesseractNamesThePackage() async {
        let error = await #expect(throws: VouchError.self) {
            _ = try await OCR.text(of: "/nonexistent.png", machine: "m", tesseract: "vouch-no-such-tesseract")
        }
        #expect(error?.kind == .unsupported && error?.message.contains("apt-get install tesseract-ocr") == true)
    }

    /// The real tesseract and ImageMagick on a picture of known text.
    @Test func variantsReadARenderedLine() async throws {
        // scripts/setup installs both.
        try #require(ChildProcess.resolve("tesseract") != nil && FileManager.default.isExecutableFile(atPath: "/usr/bin/convert"))
        let png = FileManager.default.temporaryDirectory.appendingPathComponent("vouch-ocr-test-\(getpid()).png").path
        defer { try? FileManager.default.removeItem(atPath: png) }
        let (status, output) = try await ChildProcess.run(
            "/usr/bin/convert", ["-size", "640x120", "xc:black", "-fill", "white", "-pointsize", "36", "-annotate", "+20+70", "hello vouch reader", png])
        #expect(status == .exited(0), "\(output)")
        let texts = try await OCR.variants(of: png, machine: "m")
        #expect(texts.count == 3)
        #expect(texts.contains { $0.contains("hello") }, "\(texts)")
        let first = try await OCR.variants(of: png, machine: "m") { $0.contains("hello") }
        #expect(first.contains { $0.contains("hello") } && first.count <= 3)
    }
}
