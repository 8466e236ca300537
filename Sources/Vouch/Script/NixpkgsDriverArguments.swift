import Foundation
import VouchSupport

/// The command line of nixpkgs' `nixos-test-driver`, which Vouch accepts
/// when it runs under that name. Both generations are understood:
///
/// - current: `-c/--config FILE` (a driverConfiguration.json), `-K/--keep-machine-state`
///   (`--keep-vm-state` deprecated), `-I/--interactive` (`--no-interactive`),
///   `--debug-hook-attach X`, `-o/--output_directory DIR`, `--junit-xml FILE`,
///   `--log-level LEVEL` (env `logLevel`);
/// - older: `--start-scripts S...`, `--vlans N...`, `--global-timeout N` and the
///   test script as the one positional argument, with the environment
///   variables `startScripts`, `vlans` (whitespace-separated lists),
///   `globalTimeout` and `testScript` as their defaults.
///
/// Parsing follows Python's argparse as nixpkgs configures it: `--flag=value`
/// and `--flag value`, `-oDIR` and `-o=DIR`, bundled short flags (`-KI`),
/// unambiguous prefixes of long options (`--debug-hook=PATH`, as run.nix
/// passes it), list options that take words up to the next option, and `--`.
/// Anything else is an `.invalidSpec` error naming the word (exit status 2).
public struct NixpkgsDriverArguments: Equatable, Sendable {
    /// `--config`: the driverConfiguration.json of the current generation.
    public var config: String?
    /// `--start-scripts` or `startScripts` (older generation).
    public var startScripts: [String] = []
    /// `--vlans` or `vlans` (older generation).
    public var vlans: [Int] = []
    /// `--global-timeout` or `globalTimeout`, seconds.
    public var globalTimeout: Double?
    /// The positional test script or `testScript` (older generation).
    public var testScript: String?
    /// `-K`, `--keep-machine-state`, `--keep-vm-state`.
    public var keepMachineState = false
    /// `-I`, `--interactive` (the last of it and `--no-interactive` wins).
    public var interactive = false
    /// `--debug-hook-attach` (or a prefix of it such as `--debug-hook`).
    public var debugHookAttach: String?
    /// `-o`, `--output_directory`, `--output-directory`; nil is the working directory.
    public var outputDirectory: String?
    /// `--junit-xml`, relative to the output directory as in nixpkgs.
    public var junitXML: String?
    /// `--log-level` or `logLevel`: debug, info, warning or error.
    public var logLevel: String?
    /// `-h`, `--help`.
    public var help = false
    /// Warnings to print before the run (deprecated spellings).
    public var warnings: [String] = []

    /// The log levels of nixpkgs' `LogLevel`, as `--log-level` spells them.
    public static let logLevels = ["debug", "info", "warning", "error"]

    /// The environment variables the older generation reads as defaults.
    public static let environmentNames = ["startScripts", "vlans", "globalTimeout", "testScript", "logLevel"]

    public init() {}

    // MARK: the option table

    enum Option: Equatable {
        case config, keepMachineState, keepVmState, interactive, noInteractive, debugHookAttach
        case outputDirectory, junitXML, logLevel, startScripts, vlans, globalTimeout, help

        enum Arity { case flag, one, list }

        var arity: Arity {
            switch self {
            case .keepMachineState, .keepVmState, .interactive, .noInteractive, .help: .flag
            case .startScripts, .vlans: .list
            default: .one
            }
        }

        /// Options that mean the same thing (a prefix matching only these is not ambiguous).
        var meaning: Option { self == .keepVmState ? .keepMachineState : self }
    }

    static let longOptions: [(String, Option)] = [
        ("--config", .config),
        ("--keep-machine-state", .keepMachineState),
        ("--keep-vm-state", .keepVmState),
        ("--interactive", .interactive),
        ("--no-interactive", .noInteractive),
        ("--debug-hook-attach", .debugHookAttach),
        ("--output_directory", .outputDirectory),
        ("--output-directory", .outputDirectory),
        ("--junit-xml", .junitXML),
        ("--log-level", .logLevel),
        ("--start-scripts", .startScripts),
        ("--vlans", .vlans),
        ("--global-timeout", .globalTimeout),
        ("--help", .help),
    ]

    static let shortOptions: [Character: Option] = [
        "c": .config, "K": .keepMachineState, "I": .interactive, "o": .outputDirectory, "h": .help,
    ]

    /// Flags of nixpkgs' short-lived 2026 generation (names given apart from
    /// start scripts), which Vouch does not take.
    static let unsupported = ["--vm-names", "--vm-start-scripts", "--container-names", "--container-start-scripts", "--dump-vsocks"]

    /// How each option is named in messages, as argparse names it.
    static func display(_ option: Option) -> String {
        switch option {
        case .config: "-c/--config"
        case .keepMachineState: "-K/--keep-machine-state"
        case .keepVmState: "--keep-vm-state"
        case .interactive: "-I/--interactive"
        case .noInteractive: "--no-interactive"
        case .debugHookAttach: "--debug-hook-attach"
        case .outputDirectory: "-o/--output_directory"
        case .junitXML: "--junit-xml"
        case .logLevel: "--log-level"
        case .startScripts: "--start-scripts"
        case .vlans: "--vlans"
        case .globalTimeout: "--global-timeout"
        case .help: "-h/--help"
        }
    }

    /// The long option `word` names: exactly, or as an unambiguous prefix.
    static func resolveLong(_ word: String) throws(VouchError) -> Option {
        if let exact = longOptions.first(where: { $0.0 == word }) { return exact.1 }
        if unsupported.contains(word) {
            throw VouchError(.invalidSpec, "\(word) belongs to a generation of nixpkgs' driver (separate names and start scripts) that Vouch does not accept; use --config or --start-scripts")
        }
        let matches = word.count > 2 ? longOptions.filter { $0.0.hasPrefix(word) } : []
        guard let first = matches.first else { throw VouchError(.invalidSpec, "unrecognized arguments: \(word)") }
        if matches.contains(where: { $0.1.meaning != first.1.meaning }) {
            throw VouchError(.invalidSpec, "ambiguous option: \(word) could match " + matches.map(\.0).joined(separator: ", "))
        }
        // A prefix of both keep spellings is the current one (no deprecation warning).
        return matches.contains { $0.1 == .keepMachineState } ? .keepMachineState : first.1
    }

    // MARK: parsing

    /// Parses `arguments` (argv without the program name) with `environment`
    /// supplying the older generation's defaults.
    /// - Throws: `.invalidSpec` for what nixpkgs' argparse setup would refuse, and
    ///   for mixing the two generations.
    public static func parse(_ arguments: [String], environment: [String: String] = [:]) throws(VouchError) -> NixpkgsDriverArguments {
        var result = NixpkgsDriverArguments()
        var given: [Option] = []
        var positionals: [String] = []
        var i = 0
        var onlyPositionals = false

        /// The value of an option taking one, from `attached` or the next word.
        func value(for option: Option, spelled: String, attached: String?) throws(VouchError) -> String {
            if let attached { return attached }
            guard i + 1 < arguments.count, !looksLikeOption(arguments[i + 1]) else {
                throw VouchError(.invalidSpec, "argument \(display(option)): expected one argument")
            }
            i += 1
            return arguments[i]
        }

        func apply(_ option: Option, spelled: String, attached: String?) throws(VouchError) {
            given.append(option.meaning)
            switch option.arity {
            case .flag:
                if let attached { throw VouchError(.invalidSpec, "argument \(display(option)): ignored explicit argument '\(attached)'") }
            case .one:
                let v = try value(for: option, spelled: spelled, attached: attached)
                try result.set(option, v)
            case .list:
                var words: [String] = attached.map { [$0] } ?? []
                if attached == nil {
                    while i + 1 < arguments.count, !looksLikeOption(arguments[i + 1]) {
                        i += 1
                        words.append(arguments[i])
                    }
                }
                try result.setList(option, words)
            }
            switch option {
            case .keepMachineState: result.keepMachineState = true
            case .keepVmState:
                result.keepMachineState = true
                if !result.warnings.contains(deprecatedKeepVmState) { result.warnings.append(deprecatedKeepVmState) }
            case .interactive: result.interactive = true
            case .noInteractive: result.interactive = false
            case .help: result.help = true
            default: break
            }
        }

        while i < arguments.count {
            let word = arguments[i]
            if onlyPositionals || !looksLikeOption(word) {
                positionals.append(word)
            } else if word == "--" {
                onlyPositionals = true
            } else if word.hasPrefix("--") {
                let (name, attached) = split(word)
                try apply(try resolveLong(name), spelled: name, attached: attached)
            } else {
                // One or more short options: -K, -KI, -oDIR, -o=DIR, -Ko DIR.
                var rest = Substring(word.dropFirst())
                while let c = rest.first {
                    guard let option = shortOptions[c] else {
                        throw VouchError(.invalidSpec, "unrecognized arguments: \(rest.count == word.count - 1 ? word : "-" + String(rest))")
                    }
                    rest = rest.dropFirst()
                    if option.arity == .flag {
                        try apply(option, spelled: "-\(c)", attached: nil)
                        if rest.first == "=" { throw VouchError(.invalidSpec, "argument \(display(option)): ignored explicit argument '\(rest.dropFirst())'") }
                        continue
                    }
                    let attached = rest.isEmpty ? nil : String(rest.first == "=" ? rest.dropFirst() : rest)
                    try apply(option, spelled: "-\(c)", attached: attached)
                    rest = ""
                }
            }
            i += 1
        }

        if result.help { return result }

        // The two generations do not mix: the current one has no start scripts or script argument.
        let older: [Option] = [.startScripts, .vlans]
        if result.config != nil {
            if let clash = older.first(where: { given.contains($0) }) {
                throw VouchError(.invalidSpec, "argument \(display(clash)): not allowed with -c/--config (the driver configuration lists the machines and VLANs)")
            }
            if let script = positionals.first {
                throw VouchError(.invalidSpec, "unrecognized arguments: \(script) (with -c/--config the test script is the configuration's test_script)")
            }
        } else {
            if positionals.count > 1 { throw VouchError(.invalidSpec, "unrecognized arguments: " + positionals.dropFirst().joined(separator: " ")) }
            result.testScript = positionals.first
            // The older generation's defaults from the environment (words split on whitespace).
            if !given.contains(.startScripts), let words = environment["startScripts"] { try result.setList(.startScripts, splitWords(words)) }
            if !given.contains(.vlans), let words = environment["vlans"] { try result.setList(.vlans, splitWords(words)) }
            if !given.contains(.globalTimeout), let text = environment["globalTimeout"] { try result.set(.globalTimeout, text) }
            if result.testScript == nil { result.testScript = environment["testScript"].flatMap { $0.isEmpty ? nil : $0 } }
            if result.testScript == nil {
                throw VouchError(.invalidSpec, "the following arguments are required: -c/--config (or, in the older form, the test script: an argument or $testScript)")
            }
        }
        if !given.contains(.logLevel), let level = environment["logLevel"], !level.isEmpty {
            guard logLevels.contains(level) else {
                throw VouchError(.invalidSpec, "$logLevel: invalid choice: '\(level)' (choose from " + logLevels.map { "'\($0)'" }.joined(separator: ", ") + ")")
            }
            result.logLevel = level
        }
        return result
    }

    static let deprecatedKeepVmState = "The flag '--keep-vm-state' is deprecated. Use '--keep-machine-state' instead."

    private mutating func set(_ option: Option, _ value: String) throws(VouchError) {
        switch option {
        case .config: config = value
        case .debugHookAttach: debugHookAttach = value
        case .outputDirectory: outputDirectory = value
        case .junitXML: junitXML = value
        case .logLevel:
            guard Self.logLevels.contains(value) else {
                throw VouchError(.invalidSpec, "argument --log-level: invalid choice: '\(value)' (choose from " + Self.logLevels.map { "'\($0)'" }.joined(separator: ", ") + ")")
            }
            logLevel = value
        case .globalTimeout:
            guard let seconds = Double(value), seconds > 0, seconds.isFinite else {
                throw VouchError(.invalidSpec, "argument --global-timeout: invalid value: '\(value)' (seconds, a positive number)")
            }
            globalTimeout = seconds
        default: preconditionFailure("\(option) takes no single value")
        }
    }

    private mutating func setList(_ option: Option, _ words: [String]) throws(VouchError) {
        switch option {
        case .startScripts: startScripts = words
        case .vlans:
            vlans = []
            for word in words {
                guard let n = Int(word), n >= 0 else {
                    throw VouchError(.invalidSpec, "argument --vlans: invalid VLAN number: '\(word)' (the list runs up to the next option; put the test script before --vlans or after another option)")
                }
                vlans.append(n)
            }
        default: preconditionFailure("\(option) takes no list")
        }
    }

    /// Whether argparse would take `word` for an option rather than a value
    /// (`-` alone and negative numbers are values).
    static func looksLikeOption(_ word: String) -> Bool {
        guard word.hasPrefix("-"), word.count > 1 else { return false }
        return Double(word) == nil
    }

    static func split(_ word: String) -> (String, String?) {
        guard let eq = word.firstIndex(of: "=") else { return (word, nil) }
        return (String(word[..<eq]), String(word[word.index(after: eq)...]))
    }

    static func splitWords(_ text: String) -> [String] {
        text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init)
    }

    // MARK: what the run needs

    /// The driverConfiguration.json the older generation's arguments amount
    /// to: one VM per start script (named as nixpkgs names it, `run-NAME-vm`),
    /// the VLANs, the global timeout and the test script's path.
    /// - Throws: `.invalidSpec` when two start scripts give one name.
    public func driverConfiguration(workingDirectory: String) throws(VouchError) -> [String: Any] {
        func absolute(_ path: String) -> String {
            path.hasPrefix("/") ? path : URL(fileURLWithPath: workingDirectory).appendingPathComponent(path).standardizedFileURL.path
        }
        var vms: [String: Any] = [:]
        for script in startScripts {
            let name = Driver.nameFromStartScript(script)
            guard vms[name] == nil else {
                throw VouchError(.invalidSpec, "argument --start-scripts: two start scripts give the machine name '\(name)' (nixpkgs names a machine after its run-NAME-vm script)")
            }
            vms[name] = ["name": name, "start_script": script.contains("/") ? absolute(script) : script]
        }
        var config: [String: Any] = ["vms": vms, "containers": [String: Any](), "vlans": vlans, "enable_ssh_backdoor": false]
        if let globalTimeout { config["global_timeout"] = globalTimeout }
        if let testScript { config["test_script"] = absolute(testScript) }
        return config
    }

    /// Where the JUnit report goes: nixpkgs joins a relative path to the output directory.
    public func junitPath(outputDirectory: String) -> String? {
        junitXML.map { $0.hasPrefix("/") ? $0 : URL(fileURLWithPath: outputDirectory).appendingPathComponent($0).standardizedFileURL.path }
    }
}
