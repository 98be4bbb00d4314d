//! NATS URLs as they may be logged: `nats://user:secret@host` carries credentials.

/// `url` (one server or a comma-separated list) with every server's userinfo replaced by
/// `***`: `nats://user:pw@h:4222` → `nats://***@h:4222`.
#[must_use]
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let server = server.trim();
            let (scheme, rest) = match server.find("://") {
                Some(i) => server.split_at(i + 3),
                None => ("", server),
            };
            // Userinfo ends at the last '@' before the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}***{}", &rest[at..]),
                None => server.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_never_reach_the_log() {
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("nats://u:p@w@h:4222"), "nats://***@h:4222");
        assert_eq!(redact_url("tok@h:4222"), "***@h:4222");
        assert_eq!(
            redact_url("nats://a:b@h1:4222, nats://h2:4222"),
            "nats://***@h1:4222,nats://h2:4222"
        );
    }
}
