import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchSupport

/// Screens, keys, consoles and X on a real TCG guest: one boot of the
/// desktop image (root logged in on tty1, X with twm on vt7) serves every check.
@Suite(.serialized)
struct ScreenTests {
    @Test func screenKeysConsolesAndXOnTheDesktopImage() async throws {
        var spec = guest("desk", image: "desktop")
        spec.qemu?.graphics = true
        let run = try await RealRun.run([spec]) { d in
            let m = try d.machine("desk")
            try await m.start(allowReboot: true)

            try await subtest("X comes up on the VGA display, and windows are found by name") {
                try await m.waitForX(timeout: 300)
                try await m.succeed("systemd-run --unit=term -E DISPLAY=:0 xterm -title vouch-term")
                try await m.waitForWindow("vouch-term", timeout: 120)
                let names = try await m.windowNames()
                #expect(names.contains("vouch-term"), "\(names)")
            }

            try await subtest("screenshot: a PNG of the display's size") {
                let url = try await m.screenshot("x-screen")
                #expect(url.lastPathComponent == "x-screen.png")
                let size = try #require(pngSize(try Data(contentsOf: url)))
                #expect(size.width == 1024 && size.height == 768)
            }

            try await subtest("keys typed on tty1 reach root's shell; the tty calls and OCR read them") {
                try await m.succeed("chvt 1")
                try await m.sendChars("echo Typed-$((6*7)) 'Hi_There (a+b=c) ~/x.y;z' > /tmp/typed\n")
                try await m.waitUntilSucceeds("test -s /tmp/typed", timeout: 60)
                #expect(try await m.succeed("cat /tmp/typed") == "Typed-42 Hi_There (a+b=c) ~/x.y;z\n")
                try await m.waitUntilTTYMatches(1, "Typed-\\$\\(\\(6\\*7\\)\\)", timeout: 60)
                let text = try await m.ttyText(1)
                #expect(text.split(separator: "\n").allSatisfy { $0.count == 128 })  // 1024 px / 8 px per column
                try await m.sendChars("clear; echo hello from the vouch screen test\n")
                try await m.waitForText("vouch screen test", timeout: 300)
                let variants = try await m.screenTextVariants()
                #expect(variants.count == 3)
                let timedOut = await #expect(throws: VouchError.self) { try await m.waitForText("never-on-screen-\(getpid())", timeout: 15) }
                #expect(timedOut?.kind == .timeout && timedOut?.outputTail?.contains("OCR") == true, "\(String(describing: timedOut))")
            }

            try await subtest("send_console reaches a reader of the serial console") {
                try await m.succeed("systemd-run --unit=serial-reader sh -c 'stty -F /dev/ttyS0 -echo raw; head -c 14 /dev/ttyS0 > /tmp/serial'")
                try await m.waitForUnitActiveState("serial-reader.service", "active", timeout: 60)
                try await m.sleep(1)
                try await m.sendConsole("from the host\n")
                try await m.waitUntilSucceeds("grep -qx 'from the host' /tmp/serial", timeout: 60)
            }

            try await subtest("QMP events: none lost between calls") {
                _ = try await m.qmp("stop")
                _ = try await m.qmp("cont")
                try await m.waitForQMPEvent(timeout: 30) { $0["event"]?.stringValue == "STOP" }
                try await m.waitForQMPEvent(timeout: 30) { $0["event"]?.stringValue == "RESUME" }
                #expect(try await m.succeed("echo alive") == "alive\n")
                let badChar = await #expect(throws: VouchError.self) { try await m.sendChars("naïve") }
                #expect(badChar?.kind == .invalidSpec)
            }

            try await subtest("the framebuffer, read from inside (how a host without a display device Vouch sees is captured)") {
                let path = NSTemporaryDirectory() + "vouch-fb-\(getpid()).png"
                defer { try? FileManager.default.removeItem(atPath: path) }
                try await m.captureFramebuffer(to: path)
                let size = try #require(pngSize(try Data(contentsOf: URL(fileURLWithPath: path))))
                #expect(size.width == 1024 && size.height == 768)
            }

            try await subtest("ctrl-alt-delete on tty1 reboots the guest; the next command waits for its new shell") {
                let before = try await m.succeed("cut -d' ' -f1 /proc/uptime")
                try await m.sendKey("ctrl-alt-delete")
                // A command sent while the guest goes down is lost with it (see the README): wait for QEMU's RESET.
                let health = await m.context.health
                try await retry(timeout: 120) { guard health.guestResets > 0 else { throw VouchError(.other, "no RESET yet") } }
                let after = try await m.succeed("cut -d' ' -f1 /proc/uptime")
                #expect(Double(after.trimmingCharacters(in: .whitespacesAndNewlines))! < Double(before.trimmingCharacters(in: .whitespacesAndNewlines))!)
                #expect(try await m.succeed("echo again") == "again\n")
            }
        }
        #expect(run.outcome == .passed)
    }
}

/// A container has no display device: Vouch photographs the X display the
/// guest runs (Xvfb here, from the desktop image's root), through `xwd`.
@Suite(.serialized)
struct ContainerScreenTests {
    @Test func aContainerRunningXIsPhotographedFromInside() async throws {
        var spec = container("deskct", vlans: [])
        spec.nspawn?.image = "desktop"
        let run = try await RealRun.run([spec]) { d in
            let ct = try d.machine("deskct")
            try await ct.succeed("systemd-run --unit=xvfb Xvfb :0 -screen 0 800x600x24 -nolisten tcp")
            try await ct.waitForX(timeout: 120)
            try await ct.succeed("systemd-run --unit=term -E DISPLAY=:0 xterm -title in-container")
            try await ct.waitForWindow("in-container", timeout: 120)
            let url = try await ct.screenshot("container")
            let size = try #require(pngSize(try Data(contentsOf: url)))
            #expect(size.width == 800 && size.height == 600)
            let keys = await #expect(throws: VouchError.self) { try await ct.sendChars("x") }
            #expect(keys?.kind == .unsupported && keys?.message.contains("a container has no keyboard") == true)
        }
        #expect(run.outcome == .passed)
    }
}

/// The width and height in a PNG's IHDR chunk, if `data` is a PNG.
func pngSize(_ data: Data) -> (width: Int, height: Int)? {
    let bytes = [UInt8](data.prefix(24))
    guard bytes.count == 24, bytes[0..<8] == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], bytes[12..<16] == Array("IHDR".utf8)[...] else {
        return nil
    }
    func be32(_ i: Int) -> Int { bytes[i..<i + 4].reduce(0) { $0 << 8 | Int($1) } }
    return (be32(16), be32(20))
}
