//! The credential files systemd hands to units (`LoadCredential=`): `KEY=VALUE` lines, blank
//! lines and `#` comments skipped, whitespace around keys and values dropped. The worker reads
//! the object-storage keys and the notification channels this way, so that no secret sits in an
//! environment file or on a command line.

/// The `KEY=VALUE` pairs of `text`, in order; a line without `=` is skipped.
pub fn key_values(text: &str) -> impl Iterator<Item = (String, String)> + '_ {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.trim().to_string(), value.trim().to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pairs_comments_and_blanks() {
        let text = "# keys\n\nAWS_REGION = eu-central-1\nnot a pair\nURL=https://x/?a=b\n";
        let pairs: Vec<_> = super::key_values(text).collect();
        assert_eq!(
            pairs,
            [
                ("AWS_REGION".to_string(), "eu-central-1".to_string()),
                ("URL".to_string(), "https://x/?a=b".to_string())
            ]
        );
    }
}
