import Foundation
import Testing
@testable import Vouch
@testable import VouchBackends
@testable import VouchSupport

/// Screens, keys and consoles on a real TCG guest with a VGA card: one boot
/// of the systemd image with `"graphics": true` serves every check.
@Suite(.serialized)
struct ScreenTests {
    @Test func screenKeysConsolesAndEventsOnAGraphicalGuest() async throws {
        var spec = guest("desk", image: "systemd")
        spec.qemu?.graphics = true
        let run = try await RealRun.run([spec]) { d in
            let m = try d.machine("desk")
            try await m.waitForUnit("multi-user.target", timeout: 300)
            // bochs (loaded by udev for the VGA card) gives fbcon its framebuffer.
            try await m.waitUntilSucceeds("test -e /dev/fb0", timeout: 120)

            try await subtest("screenshot: a PNG of the display's size") {
                let url = try await m.screenshot("first")
                #expect(url.lastPathComponent == "first.png")
                let png = try Data(contentsOf: url)
                let size = try #require(pngSize(png))
                #expect(size.width == 1024 && size.height == 768)
            }

            try await subtest("typed text reaches tty1, as typed") {
                try await m.succeed("systemd-run --unit=tty1-reader -p TTYPath=/dev/tty1 -p StandardInput=tty "
                                    + "-p StandardOutput=file:/tmp/typed sh -c 'while read -r l; do echo \"$l\"; done'")
                try await m.waitForUnitActiveState("tty1-reader.service", "active", timeout: 60)
                try await m.sendChars("Hi-There_ (a+b=c) 'q' ~/x.y;z\n")
                try await m.waitUntilTTYMatches(1, "Hi-There_", timeout: 60)
                try await m.waitUntilSucceeds("test -s /tmp/typed", timeout: 60)
                #expect(try await m.succeed("cat /tmp/typed") == "Hi-There_ (a+b=c) 'q' ~/x.y;z\n")
                let text = try await m.ttyText(1)
                #expect(text.split(separator: "\n").allSatisfy { $0.count == 128 })  // 1024 px / 8 px per column
            }

            try await subtest("OCR reads the screen") {
                try await m.succeed("printf '\\033[2J\\033[H\\n\\n   hello from the vouch screen test\\n' > /dev/tty1")
                try await m.waitForText("screen test", timeout: 300)
                let variants = try await m.screenTextVariants()
                #expect(variants.count == 3)
                #expect(variants.contains { $0.contains("hello") })
                let timedOut = await #expect(throws: VouchError.self) { try await m.waitForText("never-on-screen-\(getpid())", timeout: 5) }
                #expect(timedOut?.kind == .timeout && timedOut?.outputTail?.contains("OCR read") == true)
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
                try await m.waitForQMPEvent(timeout: 30) { $0["event"]?.stringValue == "STOP" }
                _ = try await m.qmp("cont")
                try await Task.sleep(for: .seconds(1))  // RESUME comes before the next call
                try await m.waitForQMPEvent(timeout: 30) { $0["event"]?.stringValue == "RESUME" }
                #expect(try await m.succeed("echo alive") == "alive\n")
            }

            try await subtest("X calls say what the guest lacks") {
                let noX = await #expect(throws: VouchError.self) { try await m.waitForX(timeout: 3) }
                #expect(noX?.kind == .timeout && noX?.outputTail?.contains("graphical target") == true)
                let noTool = await #expect(throws: VouchError.self) { _ = try await m.windowNames() }
                #expect(noTool?.kind == .unsupported && noTool?.message.contains("x11-utils") == true)
                let badChar = await #expect(throws: VouchError.self) { try await m.sendChars("naïve") }
                #expect(badChar?.kind == .invalidSpec)
            }

            try await subtest("ctrl-alt-delete: the guest reboots, which ends a machine not allowed to") {
                try await m.sendKey("ctrl-alt-delete")
                try await m.waitForShutdown(timeout: 120)
            }
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
