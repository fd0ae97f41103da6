//! poem-openapi support for the hex identifiers (feature `openapi`): they appear in the spec as
//! strings of 64 hex characters and parse from JSON bodies, paths and query strings.

use std::borrow::Cow;

use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
};
use serde_json::Value;

use crate::ids::{FileId, PeerId, Sha256Hash};

macro_rules! openapi_hex_id {
    ($ty:ty, $name:literal, $description:literal) => {
        impl Type for $ty {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                $name.into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    description: Some($description),
                    min_length: Some(64),
                    max_length: Some(64),
                    pattern: Some("^[0-9a-fA-F]{64}$".to_owned()),
                    ..MetaSchema::new_with_format("string", $name)
                }))
            }

            fn as_raw_value(&self) -> Option<&Self::RawValueType> {
                Some(self)
            }

            fn raw_element_iter<'a>(
                &'a self,
            ) -> Box<dyn Iterator<Item = &'a Self::RawElementValueType> + 'a> {
                Box::new(self.as_raw_value().into_iter())
            }
        }

        impl ParseFromJSON for $ty {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value.unwrap_or_default() {
                    Value::String(s) => s.parse().map_err(ParseError::custom),
                    other => Err(ParseError::expected_type(other)),
                }
            }
        }

        impl ParseFromParameter for $ty {
            fn parse_from_parameter(value: &str) -> ParseResult<Self> {
                value.parse().map_err(ParseError::custom)
            }
        }

        impl ToJSON for $ty {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.to_string()))
            }
        }
    };
}

openapi_hex_id!(
    FileId,
    "file-id",
    "SHA-256 of the file's content, 64 hex characters (what sha256sum prints)"
);
openapi_hex_id!(
    PeerId,
    "peer-id",
    "The peer's static X25519 public key, 64 hex characters"
);
openapi_hex_id!(Sha256Hash, "sha256", "A SHA-256 digest, 64 hex characters");
