//! Typed reads of a JSON request body's fields, each failure a 400 that names the field and says
//! what was expected.

use crate::error::ApiError;
use serde_json::{Map, Value};

/// A request body that is a JSON object.
pub struct Fields<'a>(&'a Map<String, Value>);

/// What `value` is, for messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Fields<'a> {
    pub fn of(body: &'a Value) -> Result<Self, ApiError> {
        match body {
            Value::Object(map) => Ok(Fields(map)),
            other => Err(ApiError::field("body", format!("the request body is {}, expected a JSON object", json_kind(other)))),
        }
    }

    /// The field's value; JSON null counts as absent, as the OpenAI API treats it.
    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    pub fn str(&self, name: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ApiError::field(name, format!("{name} is {}, expected a string", json_kind(other)))),
        }
    }

    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(ApiError::field(name, format!("{name} is {}, expected true or false", json_kind(other)))),
        }
    }

    /// An integer within `min..=max`.
    pub fn integer(&self, name: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        let Some(value) = self.get(name) else { return Ok(None) };
        let expected = format!("expected an integer from {min} to {max}");
        let n = match value {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64)),
            _ => None,
        };
        match n {
            Some(n) if (min..=max).contains(&n) => Ok(Some(n)),
            Some(n) => Err(ApiError::field(name, format!("{name} is {n}, {expected}"))),
            None if value.is_number() => Err(ApiError::field(name, format!("{name} is {value}, {expected}"))),
            None => Err(ApiError::field(name, format!("{name} is {}, {expected}", json_kind(value)))),
        }
    }

    /// A finite number within `min..=max`.
    pub fn number(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(f) if (min..=max).contains(&f) => Ok(Some(f)),
                _ => Err(ApiError::field(name, format!("{name} is {n}, expected a number from {min} to {max}"))),
            },
            Some(other) => Err(ApiError::field(name, format!("{name} is {}, expected a number from {min} to {max}", json_kind(other)))),
        }
    }

    /// A list of token ids below `vocab`.
    pub fn token_ids(&self, name: &str, vocab: usize) -> Result<Option<Vec<u32>>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::Array(items)) => token_id_list(name, items, vocab).map(Some),
            Some(other) => Err(ApiError::field(name, format!("{name} is {}, expected an array of token ids", json_kind(other)))),
        }
    }
}

/// `items` as token ids below `vocab`; `name` names the field in errors.
pub fn token_id_list(name: &str, items: &[Value], vocab: usize) -> Result<Vec<u32>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v.as_u64() {
            Some(id) if (id as usize) < vocab => Ok(id as u32),
            _ => Err(ApiError::field(name, format!("{name}[{i}] is {v}, expected a token id from 0 to {}", vocab - 1))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(r: Result<impl std::fmt::Debug, ApiError>) -> String {
        let e = r.unwrap_err();
        assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST);
        e.message
    }

    #[test]
    fn each_read_names_the_field_and_what_was_expected() {
        let body = json!({"n": "2", "t": -1.5, "b": 1, "s": 3, "ids": [1, 999], "max_tokens": 1e300, "nothing": null});
        let f = Fields::of(&body).unwrap();
        assert_eq!(message(f.integer("n", 1, 1)), "n is a string, expected an integer from 1 to 1");
        assert_eq!(message(f.number("t", 0.0, 2.0)), "t is -1.5, expected a number from 0 to 2");
        assert_eq!(message(f.bool("b")), "b is a number, expected true or false");
        assert_eq!(message(f.str("s")), "s is a number, expected a string");
        assert_eq!(message(f.token_ids("ids", 512)), "ids[1] is 999, expected a token id from 0 to 511");
        assert_eq!(message(f.integer("max_tokens", 1, 100)), "max_tokens is 1e+300, expected an integer from 1 to 100");
        assert_eq!(f.integer("nothing", 0, 1).unwrap(), None, "null is absent");
        assert_eq!(f.integer("absent", 0, 1).unwrap(), None);
        assert_eq!(Fields::of(&json!({"x": 4.0})).unwrap().integer("x", 0, 9).unwrap(), Some(4));
        assert_eq!(message(Fields::of(&json!([1])).map(|_| ())), "the request body is an array, expected a JSON object");
    }
}
