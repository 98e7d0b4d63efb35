//! The reading half of `GET /v1/secrets` for [`super::decode_answer`]: one pass of serde_json
//! straight into the secrets, no tree of `serde_json::Value` built and walked. Every rule of the
//! tree walk it replaced holds, and a body breaking several rules is refused for the same one:
//! a syntax error first (the whole body is read, ignored parts too, under serde_json's nesting
//! limit), then the shape (top level, `sandbox`, `repository`, `secrets`, the count, each secret
//! in order), then names and NULs in order, then duplicates. A key given twice counts once, the
//! last one (as the tree's map did). Nothing here returns serde's own type errors, which quote
//! the offending string; values are copied once, into [`SecretString`]s. One visitor type reads
//! every part (told which by [`Want`]), so serde_json's parser is instantiated once for it: the
//! static init stays small.

use std::borrow::Cow;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use super::{dangerous, normalize_name, AnswerError, WireSecret, MAX_SECRETS_PER_ANSWER as MOST};

/// Reads a `200` body: serde_json's syntax error, else the first broken rule, else the
/// secrets in the order they came.
pub(super) fn read(body: &[u8]) -> Result<Vec<WireSecret>, AnswerError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let top = match Want::Answer
        .deserialize(&mut de)
        .and_then(|top| de.end().map(|()| top))
    {
        // serde_json's syntax messages hold a line and column, never input text.
        Err(e) => return Err(AnswerError::Shape(e.to_string())),
        Ok(top) => top,
    };
    let Json::Answer(mut top) = top else {
        return Err(AnswerError::Shape("not a JSON object".into()));
    };
    if top.other {
        return Err(AnswerError::Shape(
            "a field other than sandbox, repository and secrets".into(),
        ));
    }
    for (field, seen) in [("sandbox", top.sandbox), ("repository", top.repository)] {
        match seen {
            Some(true) => {}
            Some(false) => return Err(AnswerError::Shape(format!("`{field}` is not a string"))),
            None => return Err(AnswerError::Shape(format!("missing field `{field}`"))),
        }
    }
    let list = match top.secrets.take() {
        Some(Some(list)) => list,
        Some(None) => return Err(AnswerError::Shape("`secrets` is not an array".into())),
        None => return Err(AnswerError::Shape("missing field `secrets`".into())),
    };
    if list.count > MOST {
        return Err(AnswerError::Shape(format!(
            "{} secrets, more than the {MOST} an answer may hold",
            list.count
        )));
    }
    if let Some(shape) = list.shape {
        return Err(AnswerError::Shape(shape));
    }
    if let Some(e) = list.name {
        return Err(e);
    }
    Ok(list.secrets)
}

/// The key under which serde_json (with `arbitrary_precision`, which the init's `config.json`
/// merge needs) hands a number that fits no 64-bit type to `visit_map`, as a one-entry map.
const NUMBER: &str = "$serde_json::private::Number";

/// What the value about to be read should be, and so what is kept of it. Any value is read to
/// its end (a syntax error anywhere comes first); one of another type is [`Json::Other`] (or
/// [`Json::Str`], [`Json::Bool`]), never an error.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Nothing kept (an unknown field, `sandbox`, `dangerous`: only its type matters).
    Skip,
    /// A key of an object: [`Json::Key`].
    Key,
    /// A name: its text.
    Name,
    /// A value: a [`SecretString`].
    Value,
    /// The whole answer: [`Json::Answer`].
    Answer,
    /// `secrets`: [`Json::List`].
    List,
    /// One of `secrets`: [`Json::Item`].
    Item,
}

/// One JSON value as far as the answer cares.
enum Json<'de> {
    Str(Text<'de>),
    Bool(bool),
    Key(Key),
    Answer(Box<Fields>),
    List(Box<List>),
    Item(Item<'de>),
    /// Any other value, or one not of the type wanted.
    Other,
}

/// A string, kept as [`Want`] said.
enum Text<'de> {
    Skipped,
    Plain(Cow<'de, str>),
    Secret(SecretString),
}

/// The keys the answer knows; any other is [`Key::Other`].
#[derive(Clone, Copy)]
enum Key {
    Sandbox,
    Repository,
    Secrets,
    Name,
    Value,
    Dangerous,
    /// Not a key: the map is a number ([`NUMBER`]).
    Number,
    Other,
}

impl<'de> DeserializeSeed<'de> for Want {
    type Value = Json<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Want {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a part of a secrets answer")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }

    fn visit_i64<E>(self, _: i64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Other)
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, s: &'de str) -> Result<Json<'de>, E> {
        match self {
            Want::Name => Ok(Json::Str(Text::Plain(Cow::Borrowed(s)))),
            _ => self.visit_str(s),
        }
    }

    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(match self {
            Want::Key => Json::Key(match s {
                "sandbox" => Key::Sandbox,
                "repository" => Key::Repository,
                "secrets" => Key::Secrets,
                "name" => Key::Name,
                "value" => Key::Value,
                "dangerous" => Key::Dangerous,
                NUMBER => Key::Number,
                _ => Key::Other,
            }),
            Want::Name => Json::Str(Text::Plain(Cow::Owned(s.to_owned()))),
            // `to_owned` allocates exactly `s.len()`: the box takes it over without a copy.
            Want::Value => Json::Str(Text::Secret(SecretString::from(s.to_owned()))),
            _ => Json::Str(Text::Skipped),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        if self != Want::List {
            while seq.next_element_seed(Want::Skip)?.is_some() {}
            return Ok(Json::Other);
        }
        let mut list = List::default();
        while let Some(item) = seq.next_element_seed(Want::Item)? {
            list.push(item);
        }
        Ok(Json::List(Box::new(list)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut top = Fields::default();
        let mut item = Item::default();
        let mut first = true;
        while let Some(key) = map.next_key_seed(Want::Key)? {
            let key = match key {
                Json::Key(key) => key,
                _ => Key::Other,
            };
            let want = match (self, key) {
                // A number ([`NUMBER`]), or an object whose first key is spelled like one: not
                // the object wanted either way.
                (_, Key::Number) if first => {
                    map.next_value_seed(Want::Skip)?;
                    while map.next_key_seed(Want::Skip)?.is_some() {
                        map.next_value_seed(Want::Skip)?;
                    }
                    return Ok(Json::Other);
                }
                (Want::Answer, Key::Secrets) => Want::List,
                (Want::Item, Key::Name) => Want::Name,
                (Want::Item, Key::Value) => Want::Value,
                _ => Want::Skip,
            };
            first = false;
            let value = map.next_value_seed(want)?;
            match (self, key, value) {
                (Want::Answer, Key::Sandbox, v) => top.sandbox = Some(matches!(v, Json::Str(_))),
                (Want::Answer, Key::Repository, v) => {
                    top.repository = Some(matches!(v, Json::Str(_)))
                }
                (Want::Answer, Key::Secrets, Json::List(list)) => top.secrets = Some(Some(list)),
                (Want::Answer, Key::Secrets, _) => top.secrets = Some(None),
                (Want::Item, Key::Name, Json::Str(Text::Plain(name))) => {
                    item.name = Some(Some(name))
                }
                (Want::Item, Key::Name, _) => item.name = Some(None),
                (Want::Item, Key::Value, Json::Str(Text::Secret(value))) => {
                    item.value = Some(Some(value))
                }
                (Want::Item, Key::Value, _) => item.value = Some(None),
                (Want::Item, Key::Dangerous, Json::Bool(b)) => item.dangerous = Some(Some(b)),
                (Want::Item, Key::Dangerous, _) => item.dangerous = Some(None),
                _ => {
                    top.other = true;
                    item.other = true;
                }
            }
        }
        Ok(match self {
            Want::Answer => Json::Answer(Box::new(top)),
            Want::Item => Json::Item(item),
            _ => Json::Other,
        })
    }
}

/// The top level as read: each field, when present, as its last occurrence, and whether it
/// had the right type.
#[derive(Default)]
struct Fields {
    /// A key other than the three.
    other: bool,
    sandbox: Option<bool>,
    repository: Option<bool>,
    secrets: Option<Option<Box<List>>>,
}

/// The `secrets` array as read: the secrets that passed, how many there were, and the first
/// broken rule of each kind (a shape rule; a name or NUL).
#[derive(Default)]
struct List {
    secrets: Vec<WireSecret>,
    count: usize,
    shape: Option<String>,
    name: Option<AnswerError>,
}

impl List {
    /// Takes the next element of `secrets`. Past the first broken rule nothing more is kept,
    /// only counted and checked for a shape rule (to which a name error gives way).
    fn push(&mut self, element: Json<'_>) {
        let i = self.count;
        self.count += 1;
        if i >= MOST || self.shape.is_some() {
            return;
        }
        let checked = match element {
            Json::Item(item) => item.shape(i),
            _ => Err(format!("`secrets[{i}]` is not an object")),
        };
        let (raw, value, marked) = match checked {
            Ok(checked) => checked,
            Err(shape) => {
                self.shape = Some(shape);
                return;
            }
        };
        if self.name.is_some() {
            return;
        }
        // A dangerous name passes only when the broker marked it allowed.
        let name = match normalize_name(&raw, marked) {
            Ok(name) => name,
            Err(e) => {
                self.name = Some(e.into());
                return;
            }
        };
        if let Some(offset) = value.expose_secret().bytes().position(|b| b == 0) {
            self.name = Some(AnswerError::Nul { name, offset });
            return;
        }
        let dangerous = marked && dangerous(&name).is_some();
        self.secrets.push(WireSecret {
            name,
            value,
            dangerous,
        });
    }
}

/// A secret as read, before its rules are checked: each field, when present, as its last
/// occurrence, and `None` inside when it had the wrong type.
#[derive(Default)]
struct Item<'de> {
    other: bool,
    name: Option<Option<Cow<'de, str>>>,
    value: Option<Option<SecretString>>,
    dangerous: Option<Option<bool>>,
}

impl<'de> Item<'de> {
    /// The secret's shape, checked in the tree walk's order: fields, `dangerous`, `name`,
    /// `value`. The message names the field, never its content.
    fn shape(self, i: usize) -> Result<(Cow<'de, str>, SecretString, bool), String> {
        if self.other {
            return Err(format!(
                "`secrets[{i}]` has a field other than name and value (and dangerous)"
            ));
        }
        let marked = match self.dangerous {
            None => false,
            Some(Some(b)) => b,
            Some(None) => return Err(format!("`secrets[{i}].dangerous` is not true or false")),
        };
        let missing = |field| format!("`secrets[{i}]` has no field `{field}`");
        let not_str = |field| format!("`secrets[{i}].{field}` is not a string");
        let name = match self.name {
            Some(Some(name)) => name,
            Some(None) => return Err(not_str("name")),
            None => return Err(missing("name")),
        };
        let value = match self.value {
            Some(Some(value)) => value,
            Some(None) => return Err(not_str("value")),
            None => return Err(missing("value")),
        };
        Ok((name, value, marked))
    }
}

#[cfg(test)]
mod tests {
    //! The streaming reader against the tree walk it replaced (kept here as the reference): the
    //! same secrets from every answer the tree walk took, the same message for every answer it
    //! refused.

    use proptest::prelude::*;
    use secrecy::{ExposeSecret, SecretString};

    use super::super::{
        decode_answer, is_dangerous, json_values_over, normalize_name, AnswerError, ScrubbedJson,
        WireSecret, MAX_JSON_VALUES, MAX_SECRETS_PER_ANSWER,
    };

    /// `decode_answer` as it was before the streaming reader, through `serde_json::Value`.
    fn tree_decode(body: &[u8]) -> Result<Vec<WireSecret>, AnswerError> {
        if json_values_over(body, MAX_JSON_VALUES) {
            return Err(AnswerError::Shape(format!(
                "more than {MAX_JSON_VALUES} JSON values (an answer holds at most \
                 {MAX_SECRETS_PER_ANSWER} secrets)"
            )));
        }
        let mut doc = match serde_json::from_slice::<serde_json::Value>(body) {
            Err(e) => return Err(AnswerError::Shape(e.to_string())),
            Ok(v) => ScrubbedJson(v),
        };
        let pairs = decode_shape(&mut doc.0).map_err(AnswerError::Shape)?;
        let mut out = Vec::with_capacity(pairs.len());
        for (raw, value, marked) in pairs {
            let name = normalize_name(&raw, marked)?;
            if let Some(offset) = value.expose_secret().bytes().position(|b| b == 0) {
                return Err(AnswerError::Nul { name, offset });
            }
            let dangerous = marked && is_dangerous(&name);
            out.push(WireSecret {
                name,
                value,
                dangerous,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        if let Some(w) = out.windows(2).find(|w| w[0].name == w[1].name) {
            return Err(AnswerError::Duplicate(w[0].name.clone()));
        }
        Ok(out)
    }

    fn decode_shape(
        doc: &mut serde_json::Value,
    ) -> Result<Vec<(String, SecretString, bool)>, String> {
        use serde_json::Value;
        let Value::Object(top) = doc else {
            return Err("not a JSON object".into());
        };
        if top
            .keys()
            .any(|k| !matches!(k.as_str(), "sandbox" | "repository" | "secrets"))
        {
            return Err("a field other than sandbox, repository and secrets".into());
        }
        for field in ["sandbox", "repository"] {
            match top.get(field) {
                Some(Value::String(_)) => {}
                Some(_) => return Err(format!("`{field}` is not a string")),
                None => return Err(format!("missing field `{field}`")),
            }
        }
        let list = match top.get_mut("secrets") {
            Some(Value::Array(list)) => list,
            Some(_) => return Err("`secrets` is not an array".into()),
            None => return Err("missing field `secrets`".into()),
        };
        let most = MAX_SECRETS_PER_ANSWER;
        if list.len() > most {
            return Err(format!(
                "{} secrets, more than the {most} an answer may hold",
                list.len()
            ));
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter_mut().enumerate() {
            let Value::Object(fields) = item else {
                return Err(format!("`secrets[{i}]` is not an object"));
            };
            if fields
                .keys()
                .any(|k| !matches!(k.as_str(), "name" | "value" | "dangerous"))
            {
                return Err(format!(
                    "`secrets[{i}]` has a field other than name and value (and dangerous)"
                ));
            }
            let marked = match fields.get("dangerous") {
                None => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(format!("`secrets[{i}].dangerous` is not true or false")),
            };
            let mut take = |field: &str| match fields.get_mut(field) {
                Some(Value::String(s)) => Ok(std::mem::take(s)),
                Some(_) => Err(format!("`secrets[{i}].{field}` is not a string")),
                None => Err(format!("`secrets[{i}]` has no field `{field}`")),
            };
            let name = take("name")?;
            let value = SecretString::from(take("value")?);
            out.push((name, value, marked));
        }
        Ok(out)
    }

    /// A JSON document as text is written, so that a key may come twice.
    #[derive(Clone, Debug)]
    enum J {
        Null,
        Bool(bool),
        Num(&'static str),
        Str(String),
        Arr(Vec<J>),
        Obj(Vec<(String, J)>),
    }

    impl J {
        fn write(&self, out: &mut String) {
            match self {
                J::Null => out.push_str("null"),
                J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                J::Num(n) => out.push_str(n),
                J::Str(s) => out.push_str(&serde_json::to_string(s).unwrap()),
                J::Arr(items) => {
                    out.push('[');
                    for (i, item) in items.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        item.write(out);
                    }
                    out.push(']');
                }
                J::Obj(fields) => {
                    out.push('{');
                    for (i, (k, v)) in fields.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        out.push_str(&serde_json::to_string(k).unwrap());
                        out.push(':');
                        v.write(out);
                    }
                    out.push('}');
                }
            }
        }
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => Just("name".to_owned()),
            4 => Just("value".to_owned()),
            2 => Just("dangerous".to_owned()),
            2 => Just("sandbox".to_owned()),
            2 => Just("repository".to_owned()),
            2 => Just("secrets".to_owned()),
            1 => "[a-z]{1,3}",
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => "[A-Za-z_][A-Za-z0-9_]{0,6}",
            2 => Just("PATH".to_owned()),
            1 => Just("GITHUB_X".to_owned()),
            1 => Just("Tok".to_owned()),
            1 => Just("TOK".to_owned()),
            1 => Just(String::new()),
            1 => Just("a\u{0}b".to_owned()),
            1 => Just("multi\nline \"q\" é".to_owned()),
        ]
    }

    fn json() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            prop_oneof![
                Just("7"),
                Just("-1.5"),
                Just("1e999999"),
                Just("18446744073709551616")
            ]
            .prop_map(J::Num),
            text().prop_map(J::Str),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
                proptest::collection::vec((key(), inner), 0..5).prop_map(J::Obj),
            ]
        })
    }

    /// Sometimes `Some(good)`, rarely missing or any JSON value: a field of an answer.
    fn field(
        name: &'static str,
        good: impl Strategy<Value = J>,
    ) -> impl Strategy<Value = Option<(String, J)>> {
        prop_oneof![
            12 => good.prop_map(move |j| Some((name.to_owned(), j))),
            1 => Just(None),
            1 => json().prop_map(move |j| Some((name.to_owned(), j))),
        ]
    }

    /// Rarely, one more field under any key.
    fn extra() -> impl Strategy<Value = Option<(String, J)>> {
        prop_oneof![20 => Just(None), 1 => (key(), json()).prop_map(Some)]
    }

    fn object(fields: Vec<Option<(String, J)>>) -> impl Strategy<Value = J> {
        Just(fields.into_iter().flatten().collect::<Vec<_>>())
            .prop_shuffle()
            .prop_map(J::Obj)
    }

    /// Documents shaped like answers, each rule broken now and then (fields missing, of another
    /// type, repeated, unknown, in any order), and now and then any JSON value at all.
    fn answer() -> impl Strategy<Value = J> {
        let secret = (
            field("name", text().prop_map(J::Str)),
            field("value", text().prop_map(J::Str)),
            prop_oneof![
                3 => Just(None),
                2 => any::<bool>().prop_map(|b| Some(("dangerous".to_owned(), J::Bool(b)))),
                1 => field("dangerous", any::<bool>().prop_map(J::Bool)),
            ],
            extra(),
            extra(),
        )
            .prop_flat_map(|(a, b, c, d, e)| object(vec![a, b, c, d, e]));
        let secrets = proptest::collection::vec(secret, 0..8).prop_map(J::Arr);
        let answer = (
            field("sandbox", text().prop_map(J::Str)),
            field("repository", text().prop_map(J::Str)),
            field("secrets", secrets),
            extra(),
        )
            .prop_flat_map(|(a, b, c, d)| object(vec![a, b, c, d]));
        prop_oneof![8 => answer, 1 => json()]
    }

    fn outcome(
        r: Result<Vec<WireSecret>, AnswerError>,
    ) -> Result<Vec<(String, String, bool)>, String> {
        r.map(|secrets| {
            secrets
                .into_iter()
                .map(|s| (s.name, s.value.expose_secret().to_owned(), s.dangerous))
                .collect()
        })
        .map_err(|e| e.to_string())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whole documents, and every one cut short or with a byte changed: the same outcome as
        /// the tree walk, error message included.
        #[test]
        fn the_reader_decides_as_the_tree_walk_did(
            doc in answer(),
            cut in any::<proptest::sample::Index>(),
            flip in any::<proptest::sample::Index>(),
            byte in prop_oneof![Just(b'"'), Just(b','), Just(b'}'), Just(b']'), Just(b'\\'), Just(0xff)],
        ) {
            let mut text = String::new();
            doc.write(&mut text);
            let whole = text.into_bytes();
            let mut cut_short = whole.clone();
            cut_short.truncate(cut.index(whole.len() + 1));
            let mut flipped = whole.clone();
            if !flipped.is_empty() {
                let at = flip.index(flipped.len());
                flipped[at] = byte;
            }
            for body in [&whole, &cut_short, &flipped] {
                prop_assert_eq!(
                    outcome(decode_answer(body)),
                    outcome(tree_decode(body)),
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        }
    }

    #[test]
    fn numbers_arrays_and_repeated_keys_are_read_as_the_tree_walk_read_them() {
        for body in [
            r#"1.5"#,
            r#"18446744073709551616"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[1.5]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":1e999999}"#,
            r#"{"sandbox":1.5,"repository":"o/r","secrets":[]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":"x"}],"secrets":[]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":1,"value":"x"}]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":"x","value":1}]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"PATH","value":"x","dangerous":true,"dangerous":false}]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"GITHUB_A","value":"x"},{"value":"y"}]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[{"name":"A","value":"\u0000"},{"name":"GITHUB_A","value":"y"}]}"#,
            r#"{"secrets":[{"name":"A"}],"x":1}"#,
        ] {
            assert_eq!(
                outcome(decode_answer(body.as_bytes())),
                outcome(tree_decode(body.as_bytes())),
                "{body}"
            );
        }
        // A real key spelled as serde_json's private number marker: the tree walk failed on it
        // as a bad number, the reader as a value of the wrong type; both refuse.
        for body in [
            r#"{"$serde_json::private::Number":"1","sandbox":"s","repository":"o/r","secrets":[]}"#,
            r#"{"sandbox":"s","repository":"o/r","secrets":[{"$serde_json::private::Number":"1","name":"A","value":"x"}]}"#,
        ] {
            assert!(decode_answer(body.as_bytes()).is_err(), "{body}");
            assert!(tree_decode(body.as_bytes()).is_err(), "{body}");
        }
    }
}
