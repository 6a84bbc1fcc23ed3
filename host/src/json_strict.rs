//! A JSON check that refuses duplicate object keys, and reads a few of the
//! top-level fields on the way.
//!
//! `serde_json::Value` keeps the last of two equal keys, while other JSON
//! readers (a plugin's, a database's) may keep the first: a signed body with
//! `"id"` twice could mean two different events. Such bodies are refused.
//!
//! The check builds nothing: strings are borrowed from the body where they
//! have no escapes, and only the asked-for top-level fields are kept.

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// A top-level field's value, as far as a caller needs to know it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    /// `null`, a boolean, an array or an object.
    Other,
}

/// What [`check`] saw at the top level.
#[derive(Debug)]
pub struct Top<'a, const N: usize> {
    pub is_object: bool,
    /// The values of the asked-for names, in the order they were asked for.
    pub fields: [Option<Scalar<'a>>; N],
}

/// Checks that `body` is exactly one JSON value without duplicate keys in
/// any object, and returns the top-level values of `names`. The body comes
/// as text, its UTF-8 checked once by the caller, so that its strings are
/// not checked again one by one.
pub fn check<'a, const N: usize>(
    body: &'a str,
    names: [&str; N],
) -> Result<Top<'a, N>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(body);
    let top = de.deserialize_any(TopVisitor { names })?;
    de.end()?;
    Ok(top)
}

struct TopVisitor<'n, const N: usize> {
    names: [&'n str; N],
}

impl<'de, const N: usize> Visitor<'de> for TopVisitor<'_, N> {
    type Value = Top<'de, N>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        number(v).map(|_| not_object())
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(not_object())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        AnyVisitor { keep: false }.visit_seq(seq)?;
        Ok(not_object())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut fields = [const { None }; N];
        let mut seen = Seen::default();
        while let Some(k) = map.next_key_seed(Key)? {
            let wanted = self.names.iter().position(|n| *n == k);
            seen.insert(k)?;
            let v = map.next_value_seed(AnyVisitor {
                keep: wanted.is_some(),
            })?;
            if let Some(i) = wanted {
                fields[i] = Some(v);
            }
        }
        Ok(Top {
            is_object: true,
            fields,
        })
    }
}

fn not_object<'a, const N: usize>() -> Top<'a, N> {
    Top {
        is_object: false,
        fields: [const { None }; N],
    }
}

fn number<E: de::Error>(v: f64) -> Result<Number, E> {
    Number::from_f64(v).ok_or_else(|| E::custom("number out of range"))
}

/// The keys of one object so far. Small objects are searched in a list;
/// a large one (a hostile body may have many thousands of keys) in a set.
/// In the list, a key is compared only with those that share a bit of
/// its length and last byte (`marks`): most keys are new, and are then
/// compared with none.
#[derive(Default)]
struct Seen<'a> {
    few: Vec<Cow<'a, str>>,
    marks: u64,
    many: Option<HashSet<Cow<'a, str>>>,
}

impl<'a> Seen<'a> {
    const FEW: usize = 64;

    fn insert<E: de::Error>(&mut self, k: Cow<'a, str>) -> Result<(), E> {
        let dup = match &self.many {
            None => {
                let at = k.len() + usize::from(k.as_bytes().last().copied().unwrap_or(0));
                let bit = 1u64 << (at % 64);
                let dup = self.marks & bit != 0 && self.few.contains(&k);
                self.marks |= bit;
                dup
            }
            Some(many) => many.contains(&k),
        };
        if dup {
            return Err(E::custom(format_args!("duplicate key `{k}`")));
        }
        match &mut self.many {
            Some(many) => {
                many.insert(k);
            }
            None if self.few.len() < Self::FEW => self.few.push(k),
            None => {
                let mut many: HashSet<_> = self.few.drain(..).collect();
                many.insert(k);
                self.many = Some(many);
            }
        }
        Ok(())
    }
}

/// An object key, borrowed from the body when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// Any value, checked all the way down; `keep` keeps a string or number.
#[derive(Clone, Copy)]
struct AnyVisitor {
    keep: bool,
}

impl<'de> DeserializeSeed<'de> for AnyVisitor {
    type Value = Scalar<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(if self.keep {
            Scalar::Num(v.into())
        } else {
            Scalar::Other
        })
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(if self.keep {
            Scalar::Num(v.into())
        } else {
            Scalar::Other
        })
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        let n = number(v)?;
        Ok(if self.keep {
            Scalar::Num(n)
        } else {
            Scalar::Other
        })
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(if self.keep {
            Scalar::Str(Cow::Borrowed(v))
        } else {
            Scalar::Other
        })
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(if self.keep {
            Scalar::Str(Cow::Owned(v.to_owned()))
        } else {
            Scalar::Other
        })
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element_seed(AnyVisitor { keep: false })?.is_some() {}
        Ok(Scalar::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut seen = Seen::default();
        while let Some(k) = map.next_key_seed(Key)? {
            seen.insert(k)?;
            map.next_value_seed(AnyVisitor { keep: false })?;
        }
        Ok(Scalar::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth_and_any_size() {
        assert!(check(r#"{"a":1,"a":2}"#, []).is_err());
        assert!(check(r#"{"x":[{"b":1,"c":{"d":1,"d":1}}]}"#, []).is_err());
        // The same key after an escape is the same key.
        assert!(check(r#"{"a":1,"\u0061":2}"#, []).is_err());
        // Past the small-object list.
        let many: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        let ok = format!("{{{}}}", many.join(","));
        assert!(check(&ok, []).is_ok());
        let dup = format!("{{{},\"k3\":0}}", many.join(","));
        assert!(check(&dup, []).is_err());
        // Keys of one length and last byte are told apart, and caught
        // when they repeat.
        assert!(check(r#"{"ab":1,"cb":2,"db":3}"#, []).is_ok());
        assert!(check(r#"{"ab":1,"cb":2,"ab":3}"#, []).is_err());
        // Equal keys in different objects are fine.
        assert!(check(r#"{"a":{"a":1},"b":{"a":2}}"#, []).is_ok());
    }

    #[test]
    fn top_level_fields_are_read() {
        let t = check(
            r#"{"n":{"id":"inner"},"id":7,"s":"caf\u00e9","f":1.5,"z":null}"#,
            ["id", "s", "f", "z", "missing"],
        )
        .unwrap();
        assert!(t.is_object);
        assert_eq!(t.fields[0], Some(Scalar::Num(7.into())));
        assert_eq!(t.fields[1], Some(Scalar::Str("café".into())));
        assert_eq!(
            t.fields[2],
            Some(Scalar::Num(Number::from_f64(1.5).unwrap()))
        );
        assert_eq!(t.fields[3], Some(Scalar::Other));
        assert_eq!(t.fields[4], None);
        assert!(!check("[1,2]", ["id"]).unwrap().is_object);
        assert!(check("{} {}", []).is_err());
        assert!(check("{\"a\":", []).is_err());
    }
}
