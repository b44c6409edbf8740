//! Errors the CLI explains to the user itself, rather than passing on a transport error.

use thiserror::Error;

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
    let hits: Vec<String> = all.iter().filter(|c| !query.is_empty() && c.starts_with(query)).map(|c| c.to_string()).collect();
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
