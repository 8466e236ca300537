import ArgumentParser
import Foundation
import Glibc
import Vouch

/// Vouch installed or linked as `nixos-test-driver`: nixpkgs' driver command
/// line (both generations, see `NixpkgsDriverArguments`), run as
/// `vouch run --config` runs a driver configuration.
enum NixpkgsDriverCommand {
    static let name = "nixos-test-driver"

    static let usage = """
        usage: nixos-test-driver -c CONFIG [-K] [-I] [--debug-hook-attach X] [-o DIR] [--junit-xml FILE] [--log-level LEVEL]
               nixos-test-driver [--start-scripts S ...] [--vlans N ...] [--global-timeout N] [-K] [-I] [-o DIR] [--junit-xml FILE] TESTSCRIPT
        """

    static let help = """
        \(usage)

        This is Vouch answering to the name nixos-test-driver, so that nixpkgs' test
        derivations (run.nix, driver.nix, driverInteractive) run their tests on Vouch
        unchanged. It takes the command line of nixpkgs' Python driver, in its current
        and its older form, and runs the test as `vouch run --config` does.

        current form:
          -c, --config FILE          the driverConfiguration.json (vms, containers, vlans,
                                     global_timeout, test_script)
          -K, --keep-machine-state   keep the machines' state directories after the run
                                     (--keep-vm-state: the deprecated spelling)
          -I, --interactive          open a Python session instead of running the script
                                     (--no-interactive: the default)
          --debug-hook-attach X      accepted; Vouch has no SSH debug hook and says so
          -o, --output_directory DIR an existing writable directory (default: the working
                                     directory) for vouch.log, junit.xml and copied files
                                     (--output-directory: Vouch's spelling)
          --junit-xml FILE           also write the JUnit report there (relative to DIR)
          --log-level LEVEL          debug, info, warning or error (default: $logLevel);
                                     debug shows Vouch's debug lines on the terminal
        older form:
          --start-scripts S ...      one VM per run-NAME-vm script ($startScripts)
          --vlans N ...              the VLAN numbers ($vlans)
          --global-timeout N         seconds for the whole test ($globalTimeout; also
                                     accepted with --config, where it overrides the file)
          TESTSCRIPT                 the Python test script ($testScript)

        Options also take the form --flag=value, and unambiguous prefixes of the long
        names (--debug-hook=PATH) as Python's argparse allows. $LOGFILE, when set,
        receives the run's log as XML (<logfile><line>...</line></logfile>) after the run;
        run.nix sets it to /dev/null.

        Exit status: 0 passed, 1 failed, 2 bad command line, configuration or script,
        130 interrupted, 143 global timeout. Run `vouch --help` for Vouch's own commands.
        """

    static func main(_ arguments: [String]) async -> Never {
        let environment = ProcessInfo.processInfo.environment
        let parsed: NixpkgsDriverArguments
        do throws(VouchError) {
            parsed = try .parse(arguments, environment: environment)
        } catch {
            usageError(error.message)
        }
        if parsed.help {
            print(help)
            exit(0)
        }
        for warning in parsed.warnings { writeStderr("\(name): DeprecationWarning: \(warning)\n") }

        let cwd = FileManager.default.currentDirectoryPath
        let output = absolute(parsed.outputDirectory ?? cwd)
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: output, isDirectory: &isDirectory) || !isDirectory.boolValue {
            usageError("argument -o/--output_directory: \(parsed.outputDirectory ?? cwd) is not a directory")
        }
        if access(output, W_OK) != 0 { usageError("argument -o/--output_directory: \(parsed.outputDirectory ?? cwd) is not a writeable directory") }

        let config: String
        if let given = parsed.config {
            config = absolute(given)
        } else {
            // The older form: the same driver configuration, written for this run.
            do throws(VouchError) {
                let json = try parsed.driverConfiguration(workingDirectory: cwd)
                let dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("vouch-nixos-test-driver-\(getpid())")
                try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                let file = dir.appendingPathComponent("driverConfiguration.json")
                guard let data = try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys]), (try? data.write(to: file)) != nil else {
                    fail(VouchError(.other, "cannot write the driver configuration to \(file.path)"))
                }
                generatedDirectory = dir.path
                atexit { if let dir = NixpkgsDriverCommand.generatedDirectory { try? FileManager.default.removeItem(atPath: dir) } }
                config = file.path
            } catch {
                usageError(error.message)
            }
        }
        if let hook = parsed.debugHookAttach {
            writeStderr("\(name): --debug-hook-attach \(hook): Vouch has no SSH debug hook; breakpoints do nothing and a failure ends the test as usual (use `vouch repl` to explore)\n")
        }
        if parsed.logLevel == "debug" { setenv("VOUCH_DEBUG", "1", 1) }

        var args = ["--config", config, "--output-directory", output]
        if let junit = parsed.junitPath(outputDirectory: output) { args += ["--junit-xml", junit] }
        if parsed.keepMachineState { args.append("--keep-vm-state") }
        if parsed.interactive { args.append("--interactive") }
        if let timeout = parsed.globalTimeout { args += ["--global-timeout", String(timeout)] }

        var status: Int32 = 0
        do {
            let run = try Run.parse(args)
            try await run.run()
        } catch let exit as ExitCode {
            status = exit.rawValue
        } catch {
            writeStderr("error: \(error)\n")
            status = 2
        }
        if let logfile = environment["LOGFILE"] { writeXMLLog(from: output + "/vouch.log", to: logfile) }
        exit(status)
    }

    nonisolated(unsafe) static var generatedDirectory: String?

    static func usageError(_ message: String) -> Never {
        writeStderr("\(usage)\n\(name): error: \(message)\n")
        exit(2)
    }

    /// nixpkgs' XML log format, filled from Vouch's log once the run is over.
    static func writeXMLLog(from log: String, to path: String) {
        let lines = (try? String(contentsOfFile: log, encoding: .utf8))?.split(separator: "\n", omittingEmptySubsequences: true) ?? []
        var xml = "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<logfile>"
        for line in lines { xml += "<line>\(escapeXML(String(line)))</line>\n" }
        xml += "</logfile>\n"
        guard let handle = FileHandle(forWritingAtPath: path) ?? {
            FileManager.default.createFile(atPath: path, contents: nil) ? FileHandle(forWritingAtPath: path) : nil
        }() else {
            writeStderr("\(name): cannot write the XML log to $LOGFILE (\(path))\n")
            return
        }
        try? handle.truncate(atOffset: 0)
        handle.write(Data(xml.utf8))
        try? handle.close()
    }

    static func escapeXML(_ text: String) -> String {
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            default:
                // Control characters are not allowed in XML 1.0 (nixpkgs drops them too).
                if scalar.value < 0x20 && scalar != "\t" { continue }
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }
}
