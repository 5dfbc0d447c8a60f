import CBuildInfo

/// What a binary is: its version and the commit it was built from, as
/// `--version` and `ServerInfo` report them, so an operator can tell which
/// build of several processes answered.
public enum BuildInfo {
    public static let version = "0.1.0"
    /// 12 hex digits of the commit, or "unknown" for a build `make` did not prepare.
    public static let commit = String(cString: backupd_build_commit())
    /// "0.1.0 (commit 0123456789ab)".
    public static var description: String { "\(version) (commit \(commit))" }
}
