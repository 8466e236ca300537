import Foundation

/// The texts of the nixpkgs test driver's failures, which test scripts and
/// their helpers match on. Vouch's errors start with (or contain) these
/// texts and put their own details after them.
///
/// Defined here only: Vouch formats its errors from these templates, and the
/// Python layer receives them in the bridge table (`hello`) for the failures
/// it raises itself (retry, polling conditions, argument checks).
/// Placeholders are `{name}`, filled by `format(_:)` or Python's `str.format`.
public enum NixpkgsMessage: String, CaseIterable, Sendable {
    case commandFailed = "command `{command}` failed (exit code {status})"
    case commandSucceeded = "command `{command}` unexpectedly succeeded"
    /// `retry` and every `wait_*` that runs out of time; `timeout` as Python prints it (`900.0`, `None`).
    case actionTimedOut = "action timed out after {elapsed} seconds (timeout={timeout})"
    case unitReachedState = "unit \"{unit}\" reached state \"{state}\""
    case unitInactive = "unit \"{unit}\" is inactive and there are no pending jobs"
    // "to to" is nixpkgs' own wording; scripts match it.
    case unitNotInState = "Expected unit '{unit}' to to be in state '{expected}' but it is in state '{actual}'"
    /// `{user}` is empty or ` under user "NAME"`.
    case unitInfoFailed = "retrieving systemctl info for unit \"{unit}\"{user} failed with exit code {status}"
    case unitPropertyFailed = "retrieving systemctl property \"{property}\" for unit \"{unit}\"{user} failed with exit code {status}"
    case startAllFailed = "Failed to start the following machines:\n{failures}"
    case subtestFailed = "Test \"{name}\" failed with error: \"{error}\""
    case pollingConditionFailed = "Polling condition failed: {description}"
    case durationIsBool = "expected a duration, got bool: {value}"
    case durationType = "expected a timedelta, int, or float duration, got {type}"
    case retryBothTimeouts = "retry() got both 'timeout' and 'timeout_seconds' arguments. Pass only 'timeout'"
    case waitBothTimeouts = "wait() got both 'timeout' and 'timeout_seconds' arguments. Pass only 'timeout'"
    case pollingBothIntervals = "polling_condition() got both 'interval' and 'seconds_interval' arguments. Pass only 'interval'"
    case sleepBothArguments = "sleep() got both 'duration' and 'secs'. Pass only 'duration'"
    case sleepNoArgument = "sleep() missing required argument 'duration'"
    case qmpAPIError = "<QMP API error related to transaction {id} [{class}]: {description}>"
    case qmpNotReady = "QMP API is not ready yet, is the VM ready?"

    /// The name the Python side looks the template up by.
    public var key: String { "\(self)" }

    /// The text with each `{name}` replaced by `values[name]`.
    public func format(_ values: [String: String]) -> String {
        var text = rawValue
        for (name, value) in values { text = text.replacingOccurrences(of: "{\(name)}", with: value) }
        return text
    }

    /// A number of seconds as Python prints a float (`3.0`, `0.5`, `900.0`),
    /// which is how nixpkgs shows timeouts.
    public static func pythonFloat(_ seconds: Double) -> String {
        seconds == seconds.rounded() && abs(seconds) < 1e16 ? String(format: "%.1f", seconds) : "\(seconds)"
    }

    /// Elapsed seconds as nixpkgs prints them (two decimals).
    public static func elapsed(_ seconds: Double) -> String { String(format: "%.2f", seconds) }
}
