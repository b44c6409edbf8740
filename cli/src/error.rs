//! Errors the CLI explains to the user itself, rather than passing on a transport error, and
//! the exit code and hint each kind of failure gets (README "The podcr command").

use thiserror::Error;

/// Exit codes, documented in the README and `podcr --help`.
pub mod exit {
    /// The command did what it was asked.
    pub const OK: u8 = 0;
    /// containerd, the CRI or the shim refused or failed the operation (or a `check` failed).
    pub const FAILED: u8 = 1;
    /// Bad flags or arguments, or local input that is wrong (checked before connecting).
    pub const USAGE: u8 = 2;
    /// containerd or the CRI could not be reached, or did not answer within --call-timeout.
    pub const UNREACHABLE: u8 = 3;
    /// No pod or sandbox matches what was asked for.
    pub const NOT_FOUND: u8 = 4;
}

/// Input the user can fix without containerd: refused before any connection.
#[derive(Debug, Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// containerd or the CRI cannot be reached on its socket, or does not answer in time.
#[derive(Debug, Error)]
#[error("cannot reach {path}: {reason}")]
pub struct Unreachable {
    pub path: String,
    pub reason: String,
}

/// The exit code for an error: the first cause in the chain that says what kind it is.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<UsageError>() {
            return exit::USAGE;
        }
        if cause.is::<Unreachable>() {
            return exit::UNREACHABLE;
        }
        if let Some(l) = cause.downcast_ref::<LookupError>() {
            return match l {
                LookupError::NotFound(_) => exit::NOT_FOUND,
                LookupError::Ambiguous { .. } => exit::USAGE,
                _ => exit::FAILED,
            };
        }
        if let Some(s) = cause.downcast_ref::<tonic::Status>() {
            // tonic's own request timeout comes back as Cancelled("Timeout expired").
            let timed_out = s.code() == tonic::Code::Cancelled && s.message().contains("Timeout expired");
            if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) || timed_out {
                return exit::UNREACHABLE;
            }
        }
    }
    exit::FAILED
}

/// The error as one line per failure, each cause once: a context that already quotes its
/// source does not repeat it, gRPC statuses show their code and message (not tonic's debug
/// dump), and control characters from remote messages are escaped rather than sent to the
/// terminal.
pub fn render(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = match cause.downcast_ref::<tonic::Status>() {
            Some(s) if s.code() == tonic::Code::Cancelled && s.message().contains("Timeout expired") => {
                "no answer within --call-timeout".to_string()
            }
            Some(s) => format!("{:?}: {}", s.code(), s.message()),
            None => cause.to_string(),
        };
        if !parts.last().is_some_and(|p| p.contains(&text)) {
            parts.push(escape(&text));
        }
        // A status's own sources are transport internals the message above already covers.
        if cause.is::<tonic::Status>() {
            break;
        }
    }
    parts.join(": ")
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { c.escape_debug().to_string() } else { c.to_string() })
        .collect()
}

/// What to try next, for the failures where the message alone does not say.
pub fn hint(code: u8) -> Option<&'static str> {
    match code {
        exit::UNREACHABLE => Some(
            "is containerd running? pass -a/--address (or set CONTAINERD_ADDRESS) to name its socket, and --call-timeout to wait longer",
        ),
        exit::NOT_FOUND => Some("`podcr sandbox ls` and `crictl pods` list the pods podcr can see"),
        _ => None,
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum LookupError {
    #[error("no pod matches {0:?}")]
    NotFound(String),
    #[error("{query:?} is ambiguous: it matches {}", .candidates.join(", "))]
    Ambiguous { query: String, candidates: Vec<String> },
    #[error("pod {0} is not a shim sandbox (sandboxer {1:?}); podcr only checkpoints pods run by the podcr shim")]
    NotShimSandbox(String, String),
    #[error("image {0:?} of container {1:?} is not present; import or pull it first")]
    MissingImage(String, String),
}

/// Picks the one candidate equal to `query`, or else the only one that starts with it.
pub fn unique_match<'a>(query: &str, candidates: impl IntoIterator<Item = &'a str>) -> Result<String, LookupError> {
    let all: Vec<&str> = candidates.into_iter().collect();
    if all.contains(&query) {
        return Ok(query.to_string());
    }
    let hits: Vec<String> =
        all.iter().filter(|c| !query.is_empty() && c.starts_with(query)).map(|c| c.to_string()).collect();
    match hits.len() {
        0 => Err(LookupError::NotFound(query.to_string())),
        1 => Ok(hits.into_iter().next().unwrap_or_default()),
        _ => Err(LookupError::Ambiguous { query: query.to_string(), candidates: hits }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendering_says_each_cause_once_and_escapes_control_bytes() {
        let e = anyhow::Error::from(tonic::Status::cancelled("Timeout expired")).context("list sandboxes");
        assert_eq!(render(&e), "list sandboxes: no answer within --call-timeout");
        let inner = anyhow::anyhow!("criu failed");
        let e = inner.context("checkpoint: criu failed");
        assert_eq!(render(&e), "checkpoint: criu failed");
        let e = anyhow::Error::from(tonic::Status::internal("bad \x1b[31mred")).context("x");
        assert_eq!(render(&e), "x: Internal: bad \\u{1b}[31mred");
    }

    #[test]
    fn exit_codes_follow_the_first_telling_cause() {
        let e = anyhow::Error::from(UsageError("bad".into())).context("checkpoint");
        assert_eq!(exit_code(&e), exit::USAGE);
        let e = anyhow::Error::from(Unreachable { path: "/s".into(), reason: "refused".into() }).context("list");
        assert_eq!(exit_code(&e), exit::UNREACHABLE);
        assert!(hint(exit_code(&e)).is_some_and(|h| h.contains("-a/--address")));
        let e = anyhow::Error::from(tonic::Status::cancelled("Timeout expired")).context("ListPodSandbox");
        assert_eq!(exit_code(&e), exit::UNREACHABLE);
        assert_eq!(exit_code(&anyhow::Error::from(tonic::Status::internal("boom"))), exit::FAILED);
        assert_eq!(exit_code(&LookupError::NotFound("x".into()).into()), exit::NOT_FOUND);
        assert_eq!(exit_code(&anyhow::anyhow!("criu failed")), exit::FAILED);
    }

    #[test]
    fn exact_wins_over_prefix() {
        let ids = ["abc", "abcdef", "xyz"];
        assert_eq!(unique_match("abc", ids).unwrap(), "abc");
        assert_eq!(unique_match("abcd", ids).unwrap(), "abcdef");
        assert_eq!(unique_match("x", ids).unwrap(), "xyz");
    }

    #[test]
    fn missing_and_ambiguous() {
        let ids = ["abc1", "abc2"];
        assert_eq!(unique_match("q", ids), Err(LookupError::NotFound("q".into())));
        assert!(matches!(unique_match("abc", ids), Err(LookupError::Ambiguous { .. })));
        assert!(matches!(unique_match("", ids), Err(LookupError::NotFound(_))));
        let msg = unique_match("abc", ids).unwrap_err().to_string();
        assert!(msg.contains("abc1, abc2"), "{msg}");
    }
}
