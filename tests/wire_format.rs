//! The wire format of `GET /v1/secrets` from outside: every bad answer of the corpus
//! (`tests/corpus/bad-answers/`) is refused by the one decoder (`protocol::decode_answer`, which
//! the init's fetch uses) naming why and echoing no value, and a good answer encoded by the
//! daemon's encoder decodes to the same secrets. The round-trip property test lives in
//! `protocol`'s unit tests.

mod support;

use sandbox_init::inject::fetch::{self, FetchError};
use sandbox_init::protocol::{self, WireSecretRef};
use secrecy::ExposeSecret;

#[test]
fn every_bad_answer_of_the_corpus_is_refused_naming_why() {
    let cases = support::bad_answers();
    assert!(cases.len() >= 30, "the corpus lost cases: {}", cases.len());
    for case in &cases {
        let e = protocol::decode_answer(&case.body).expect_err(&case.name);
        let msg = e.to_string();
        assert!(
            msg.contains(&case.why),
            "{}: expected {:?} in {msg:?}",
            case.name,
            case.why
        );
        assert!(
            !msg.contains(support::MARK),
            "{}: echoes a value: {msg}",
            case.name
        );
        assert!(msg.len() < 1024, "{}: an unbounded message", case.name);
        // The init's fetch refuses it the same way, as garbage from the broker.
        match fetch::parse_answer(hyper::StatusCode::OK, &case.body) {
            Err(FetchError::Garbage(m)) => assert_eq!(m, msg, "{}", case.name),
            other => panic!("{}: {other:?}", case.name),
        }
    }
}

#[test]
fn an_encoded_answer_decodes_to_the_same_secrets_whatever_the_bytes() {
    let values = [
        "plain",
        "multi\nline\r\nwith \"quotes\" and \\ and $'`",
        "unicode é ✓ 𝄞 and \u{7f}\u{1}",
        "",
    ];
    let names = ["A", "B_2", "_C", "Z"];
    let refs: Vec<WireSecretRef> = names
        .iter()
        .zip(values)
        .map(|(name, value)| WireSecretRef { name, value })
        .collect();
    let body = protocol::encode_answer("4fc5777b8c8862a1f1c0ac19cd351ee5", "octo-org/app", &refs);
    let got = fetch::parse_answer(hyper::StatusCode::OK, &body).unwrap();
    let got: Vec<(&str, &str)> = got
        .iter()
        .map(|s| (s.name.as_str(), s.value.expose_secret()))
        .collect();
    let mut want: Vec<(&str, &str)> = names.into_iter().zip(values).collect();
    want.sort();
    assert_eq!(got, want, "sorted by name");
}
