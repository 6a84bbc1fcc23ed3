//! SQL on this plugin's private SQLite database.

use crate::bindings::hookhost::plugin::sql as host;
pub use crate::bindings::hookhost::plugin::sql::{Rows, Value};
use crate::HostError;

/// Runs one statement; returns the number of rows changed.
pub fn execute(statement: &str, params: &[Value]) -> Result<u64, HostError> {
    host::execute(statement, params)
}

/// Runs one query.
pub fn query(statement: &str, params: &[Value]) -> Result<Rows, HostError> {
    host::query(statement, params)
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Integer(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Integer(b as i64)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Real(f)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Value {
        o.map(Into::into).unwrap_or(Value::Null)
    }
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
}

/// `params![a, b, c]`: a parameter list from anything convertible to [`Value`].
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => { &[$($crate::sql::Value::from($v)),*] };
}
