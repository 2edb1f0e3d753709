//! The rules of request fields, stated once: the handlers enforce them and the OpenAPI
//! document announces the same bounds (`#[schema(...)]` beside each field uses these constants).

use super::error::ApiError;

/// Longest name-like field, in characters.
pub const MAX_TEXT: usize = 100;
/// Largest price or bill amount, in cents.
pub const MAX_CENTS: i64 = 1_000_000_000;
/// Largest stock of a product.
pub const MAX_STOCK: i64 = 1_000_000_000;
/// Largest quantity of one order line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Most lines in one order.
pub const MAX_LINES: usize = 50;

/// Deserializes a JSON integer, as JSON Schema counts them: `2`, and also `2.0` (a number with
/// no fractional part), which serde's `i64` refuses.
pub fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    struct Integer;

    impl serde::de::Visitor<'_> for Integer {
        type Value = i64;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an integer")
        }

        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
            Ok(v)
        }

        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
            i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
        }

        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
            // Exactly representable integers only: |v| < 2^63.
            if v.fract() == 0.0 && v.abs() < 9_223_372_036_854_775_808.0 {
                Ok(v as i64)
            } else {
                Err(E::custom(format!("{v} is not an integer in range")))
            }
        }
    }

    d.deserialize_any(Integer)
}

/// Whitespace as the OpenAPI document's pattern `\S` means it: ECMAScript's `\s` (JSON Schema
/// patterns are ECMAScript regular expressions), which differs from Rust's `char::is_whitespace`
/// (U+0085 is not in it, U+FEFF is).
fn is_ecma_space(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// `value` has a non-blank character and at most [`MAX_TEXT`] characters.
pub fn text(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().all(is_ecma_space) {
        return Err(ApiError::invalid(format!("{field} must not be empty")));
    }
    if value.chars().count() > MAX_TEXT {
        return Err(ApiError::invalid(format!(
            "{field} must be at most {MAX_TEXT} characters"
        )));
    }
    Ok(())
}

/// `value` lies in `lo..=hi`.
pub fn int(field: &str, value: i64, lo: i64, hi: i64) -> Result<(), ApiError> {
    if (lo..=hi).contains(&value) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must be between {lo} and {hi}, not {value}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use utoipa::PartialSchema;

    use super::*;
    use crate::api::fees::{NewFee, PaymentNotice};
    use crate::api::orders::{NewOrder, NewOrderItem, Payment};
    use crate::api::products::NewProduct;

    /// What the OpenAPI document says of a name-like field: a non-blank character.
    const NON_BLANK: &str = r"\S";

    fn schema<T: PartialSchema>() -> Value {
        serde_json::to_value(T::schema()).unwrap()
    }

    /// The document announces exactly the bounds the handlers enforce.
    #[test]
    fn the_openapi_bounds_are_the_enforced_ones() {
        let texts = [
            (schema::<NewProduct>(), vec!["sku", "name"]),
            (schema::<NewOrder>(), vec!["user_id"]),
            (schema::<NewOrderItem>(), vec!["sku"]),
            (schema::<Payment>(), vec!["payment_id"]),
            (schema::<NewFee>(), vec!["household", "period"]),
            (schema::<PaymentNotice>(), vec!["transaction_id"]),
        ];
        for (s, fields) in &texts {
            for f in fields {
                let p = &s["properties"][f];
                assert_eq!(p["minLength"], 1, "{f}");
                assert_eq!(p["maxLength"], MAX_TEXT, "{f}");
                assert_eq!(p["pattern"], NON_BLANK, "{f}");
            }
        }
        let ints = [
            (schema::<NewProduct>(), "price_cents", 0, MAX_CENTS),
            (schema::<NewProduct>(), "stock", 0, MAX_STOCK),
            (schema::<NewOrderItem>(), "quantity", 1, MAX_QUANTITY),
            (schema::<NewFee>(), "amount_cents", 1, MAX_CENTS),
        ];
        for (s, f, lo, hi) in &ints {
            let p = &s["properties"][f];
            assert_eq!(p["minimum"].as_f64(), Some(*lo as f64), "{f}");
            assert_eq!(p["maximum"].as_f64(), Some(*hi as f64), "{f}");
        }
        let items = &schema::<NewOrder>()["properties"]["items"];
        assert_eq!(items["minItems"], 1);
        assert_eq!(items["maxItems"], MAX_LINES);
    }

    #[derive(serde::Deserialize)]
    struct N {
        #[serde(deserialize_with = "integer")]
        n: i64,
    }

    #[test]
    fn integers_may_be_written_with_a_zero_fraction() {
        let n = |j: &str| serde_json::from_str::<N>(j).map(|v| v.n);
        assert_eq!(n(r#"{"n": 2}"#).unwrap(), 2);
        assert_eq!(n(r#"{"n": 2.0}"#).unwrap(), 2);
        assert_eq!(n(r#"{"n": -7.0}"#).unwrap(), -7);
        assert!(n(r#"{"n": 2.5}"#).is_err());
        assert!(n(r#"{"n": 1e30}"#).is_err());
        assert!(n(r#"{"n": 18446744073709551615}"#).is_err());
        assert!(n(r#"{"n": "2"}"#).is_err());
    }

    #[test]
    fn blank_long_and_out_of_range_values_are_refused() {
        assert!(text("f", "a").is_ok());
        assert!(text("f", " \t\u{3000}\u{feff}").is_err());
        // Not whitespace to ECMAScript, whatever Rust says.
        assert!(text("f", "\u{85}").is_ok());
        assert!(text("f", &"é".repeat(MAX_TEXT)).is_ok());
        assert!(text("f", &"é".repeat(MAX_TEXT + 1)).is_err());
        assert!(int("q", 1, 1, 10).is_ok());
        assert!(int("q", 0, 1, 10).is_err());
        assert!(int("q", 11, 1, 10).is_err());
    }
}
