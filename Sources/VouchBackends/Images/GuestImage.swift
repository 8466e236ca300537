internal import CVouch
import Foundation
import VouchSupport

/// A guest image built by `images/build.sh`: a directory with `image.json`
/// naming its kernel, initrd, optional root disk and kernel command line.
public struct GuestImage: Sendable {
    /// The image name (`minimal`, `systemd`, or a directory's name).
    public var name: String
    /// The directory holding the image files.
    public var directory: URL
    /// The kernel to boot directly.
    public var kernel: URL
    /// Its initrd, if any.
    public var initrd: URL?
    /// The root disk, if any (used copy-on-write).
    public var rootDisk: URL?
    /// The root filesystem unpacked, for containers (systemd-nspawn).
    public var rootDirectory: URL?
    /// The kernel command line the image needs.
    public var cmdline: String
    /// The systemd unit that means "booted" for this image, if it runs systemd.
    public var readyUnit: String?
    /// Kernel parameter the image reads its hostname from.
    public var hostnameParameter: String
    /// Whether the image serves its backdoor on vsock too (`vouch.vsock=PORT`),
    /// as the firecracker and cloud-hypervisor backends need.
    public var vsockBackdoor: Bool

    /// Loads the image in `directory`.
    /// - Throws: `VouchError.missingImage` naming the file that is missing or malformed.
    public init(directory: URL) throws(VouchError) {
        let manifestURL = directory.appendingPathComponent("image.json")
        guard let data = FileManager.default.contents(atPath: manifestURL.path) else {
            throw VouchError(.missingImage, "no image manifest at \(manifestURL.path)")
        }
        let manifest: JSONValue
        do { manifest = try JSONValue.parse(Array(data)) } catch {
            throw VouchError(.missingImage, "malformed image manifest \(manifestURL.path): \(error.message)", cause: error)
        }
        func file(_ key: String) throws(VouchError) -> URL? {
            guard let rel = manifest[key]?.stringValue else { return nil }
            let url = directory.appendingPathComponent(rel)
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw VouchError(.missingImage, "image \(directory.lastPathComponent): \(key) file \(url.path) is missing")
            }
            return url
        }
        guard let kernel = try file("kernel") else {
            throw VouchError(.missingImage, "image manifest \(manifestURL.path) names no kernel")
        }
        self.name = manifest["name"]?.stringValue ?? directory.lastPathComponent
        self.directory = directory
        self.kernel = kernel
        self.initrd = try file("initrd")
        self.rootDisk = try file("rootDisk")
        self.rootDirectory = try file("rootDirectory")
        self.cmdline = manifest["cmdline"]?.stringValue ?? "console=ttyS0"
        self.readyUnit = manifest["readyUnit"]?.stringValue
        self.hostnameParameter = manifest["hostnameParam"]?.stringValue ?? "vouch.hostname"
        self.vsockBackdoor = manifest["vsockBackdoor"]?.boolValue ?? false
    }

    /// The built-in images, by name.
    public static let builtIn = ["minimal", "systemd", "desktop"]

    /// Finds a built-in image by name, or an image directory by path.
    /// - Throws: `VouchError.missingImage` saying how to build it.
    public static func resolve(_ reference: String, store: URL = ImageStore.defaultRoot) throws(VouchError) -> GuestImage {
        if reference.contains("/") {
            return try GuestImage(directory: URL(fileURLWithPath: reference))
        }
        let dir = store.appendingPathComponent(reference)
        guard FileManager.default.fileExists(atPath: dir.appendingPathComponent("image.json").path) else {
            let hint = builtIn.contains(reference)
                ? "build it with `vouch images build \(reference)` (or images/build.sh \(reference))"
                : "built-in images are \(builtIn.joined(separator: ", ")); or give a path to an image directory"
            throw VouchError(.missingImage, "guest image '\(reference)' not found in \(store.path): \(hint)")
        }
        return try GuestImage(directory: dir.resolvingSymlinksInPath())
    }
}

/// Where built guest images live.
public enum ImageStore {
    /// `$VOUCH_IMAGES`, else `<checkout>/.cache/images` when running from a
    /// source checkout, else `~/.cache/vouch/images`.
    public static var defaultRoot: URL {
        if let env = ProcessInfo.processInfo.environment["VOUCH_IMAGES"], !env.isEmpty {
            return URL(fileURLWithPath: env)
        }
        if let checkout = sourceCheckout {
            return checkout.appendingPathComponent(".cache/images")
        }
        return FileManager.default.homeDirectoryForCurrentUser.appendingPathComponent(".cache/vouch/images")
    }

    /// The Vouch source checkout the library was built in, if any (found by
    /// walking up from libVouch.so to `images/build.sh`).
    public static var sourceCheckout: URL? {
        let library = vouch_library_path().map { String(cString: $0) } ?? "/proc/self/exe"
        var dir = URL(fileURLWithPath: library).resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<6 {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("images/build.sh").path) {
                return dir
            }
            dir = dir.deletingLastPathComponent()
        }
        return nil
    }

    /// The image build script: `$VOUCH_IMAGE_RECIPE`, the source checkout's,
    /// or an installed one (`PREFIX/share/vouch/images`, see scripts/install).
    public static var buildScript: URL? {
        if let env = ProcessInfo.processInfo.environment["VOUCH_IMAGE_RECIPE"] { return URL(fileURLWithPath: env) }
        if let checkout = sourceCheckout { return checkout.appendingPathComponent("images/build.sh") }
        guard let library = vouch_library_path().map({ String(cString: $0) }) else { return nil }
        let installed = URL(fileURLWithPath: library).resolvingSymlinksInPath()
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("share/vouch/images/build.sh")
        return FileManager.default.fileExists(atPath: installed.path) ? installed : nil
    }
}
