//! What goes wrong while finding a Sentinel service's primary, told apart by whether asking
//! again may help, and the client errors after which the primary must be looked up again.

use larder_cache_api::{Error, ErrorKind};
use redis::{ErrorKind as RK, RedisError, ServerErrorKind};

use crate::error::{self, BACKEND};

/// Why no primary could be found: one line per sentinel asked.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    kind: ErrorKind,
    detail: String,
}

impl Failure {
    pub(super) fn into_error(self) -> Error {
        Error::new(self.kind, format!("connect: {}", self.detail)).with_backend(BACKEND)
    }

    /// The failure as a client error, for the operation that waited for it (which maps it
    /// back to the same kind in `error::map`).
    pub(super) fn to_redis(&self) -> RedisError {
        match self.kind {
            ErrorKind::Config => RedisError::from((
                RK::InvalidClientConfig,
                "Redis Sentinel",
                self.detail.clone(),
            )),
            ErrorKind::Timeout => {
                std::io::Error::new(std::io::ErrorKind::TimedOut, self.detail.clone()).into()
            }
            _ => std::io::Error::new(std::io::ErrorKind::NotConnected, self.detail.clone()).into(),
        }
    }

    /// The failure of a discovery of `service` that ran into `problems`, one per sentinel
    /// asked: a configuration error when every sentinel said so, unavailable when one was
    /// down, else a timeout.
    pub(super) fn of(service: &str, problems: &[Problem]) -> Failure {
        let kind = if problems
            .iter()
            .all(|p| matches!(p, Problem::Misconfigured(_)))
        {
            ErrorKind::Config
        } else if problems.iter().any(|p| matches!(p, Problem::Down(_))) {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Timeout
        };
        let lines: Vec<&str> = problems
            .iter()
            .map(|p| match p {
                Problem::Down(s) | Problem::Slow(s) | Problem::Misconfigured(s) => s.as_str(),
            })
            .collect();
        Failure {
            kind,
            detail: format!(
                "no primary found for Sentinel service {service:?}: {}",
                lines.join("; ")
            ),
        }
    }
}

/// What went wrong with one sentinel, or with the primary it named.
pub(super) enum Problem {
    /// Not reachable, or the node it named is not a reachable primary: may heal.
    Down(String),
    /// No reply in time.
    Slow(String),
    /// Will not heal by asking again: not a sentinel, wrong credentials, unknown service.
    Misconfigured(String),
}

impl Problem {
    pub(super) fn prefixed(self, at: &str, sep: &str) -> Problem {
        match self {
            Problem::Down(s) => Problem::Down(format!("{at}{sep}{s}")),
            Problem::Slow(s) => Problem::Slow(format!("{at}{sep}{s}")),
            Problem::Misconfigured(s) => Problem::Misconfigured(format!("{at}{sep}{s}")),
        }
    }
}

/// Which node a problem is about, for the hint in its message.
#[derive(Clone, Copy)]
pub(super) enum Node {
    Sentinel,
    Primary,
}

impl Node {
    fn what(self) -> &'static str {
        match self {
            Node::Sentinel => "a Redis Sentinel",
            Node::Primary => "a Redis primary",
        }
    }

    fn credentials(self) -> &'static str {
        match self {
            Node::Sentinel => "check sentinel_password and sentinel_username",
            Node::Primary => "check the user and password in the URL",
        }
    }
}

/// A client error on one line, at most 300 characters: a reply that is not Redis protocol
/// is quoted by the client, newlines and all.
fn one_line(e: &RedisError) -> String {
    let mut s = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    if let Some((cut, _)) = s.char_indices().nth(300) {
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

/// Describes a client error from a node that should be a sentinel or a primary. Messages
/// carry server replies and I/O errors only, never credentials.
pub(super) fn problem(e: &RedisError, node: Node) -> Problem {
    let what = node.what();
    let text = one_line(e);
    if e.is_timeout() {
        return Problem::Slow(format!("no reply in time ({text})"));
    }
    // rustls reports an untrusted or mismatched certificate, and a TLS client talking to a
    // plain server, as invalid data (see `error::map_connect`).
    if error::io_kind(e) == Some(std::io::ErrorKind::InvalidData) {
        return Problem::Misconfigured(format!(
            "TLS handshake failed ({text}; is the certificate trusted and the scheme right?)"
        ));
    }
    let auth = || {
        Problem::Misconfigured(format!(
            "authentication failed ({text}; {})",
            node.credentials()
        ))
    };
    match e.code() {
        Some("NOAUTH") | Some("WRONGPASS") => return auth(),
        Some("NOPERM") => return Problem::Misconfigured(format!("permission denied ({text})")),
        _ => {}
    }
    match e.kind() {
        RK::AuthenticationFailed => auth(),
        RK::Parse | RK::UnexpectedReturnType | RK::RESP3NotSupported => Problem::Misconfigured(
            format!("the reply is not that of {what} (not Redis protocol: {text})"),
        ),
        RK::Server(ServerErrorKind::ResponseError) | RK::Extension => {
            Problem::Misconfigured(format!("refused: {text} (is it {what}?)"))
        }
        RK::InvalidClientConfig => {
            Problem::Misconfigured(format!("invalid configuration ({text})"))
        }
        _ => Problem::Down(format!("unreachable ({text})")),
    }
}

/// A write refused by a replica.
pub(super) fn is_readonly(e: &RedisError) -> bool {
    e.kind() == RK::Server(ServerErrorKind::ReadOnly) || e.code() == Some("READONLY")
}

/// An error after which the primary must be looked up again: the connection is gone or
/// stuck, or the server is no longer (or not yet) a usable primary.
pub(super) fn needs_new_primary(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || is_readonly(e)
        || matches!(
            e.kind(),
            RK::Server(ServerErrorKind::MasterDown | ServerErrorKind::BusyLoading)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_their_kind_through_the_client_error() {
        for kind in [
            ErrorKind::Config,
            ErrorKind::Timeout,
            ErrorKind::Unavailable,
        ] {
            let f = Failure {
                kind,
                detail: "x".into(),
            };
            let e = error::map("GET", f.to_redis());
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
