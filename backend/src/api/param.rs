//! Path parameters that keep their names in errors.
//!
//! poem-openapi looks path parameters up by position (`param0`, `param1`, …) and its own
//! [`Path`](poem_openapi::param::Path) reports a parse failure under that positional name
//! ("failed to parse path `param0`"). This [`Path`] extracts the same way but names the
//! parameter as the spec does. It must be called `Path`: the `OpenApi` macro recognises path
//! parameters by that type name.

use std::marker::PhantomData;

use poem::{Request, RequestBody, Result};
use poem_openapi::error::ParsePathError;
use poem_openapi::registry::{MetaParamIn, MetaSchemaRef, Registry};
use poem_openapi::types::ParseFromParameter;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};

/// The name a path parameter has in the route and the spec.
pub trait ParamName: Send + Sync {
    const NAME: &'static str;
}

/// `{hash}`: a file id.
pub enum Hash {}
/// `{id}`: a peer id.
pub enum Id {}
/// `{peer_id}`: a peer id after another parameter.
pub enum PeerIdName {}
/// `{key_id}`: an API key's id.
pub enum KeyId {}
/// `{username}`: a dashboard user's name.
pub enum Username {}

impl ParamName for Hash {
    const NAME: &'static str = "hash";
}
impl ParamName for Id {
    const NAME: &'static str = "id";
}
impl ParamName for PeerIdName {
    const NAME: &'static str = "peer_id";
}
impl ParamName for KeyId {
    const NAME: &'static str = "key_id";
}
impl ParamName for Username {
    const NAME: &'static str = "username";
}

/// A path parameter of type `T` named `N::NAME` in errors.
pub struct Path<T, N>(pub T, PhantomData<N>);

impl<'a, T: ParseFromParameter, N: ParamName> ApiExtractor<'a> for Path<T, N> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::Parameter];
    const PARAM_IS_REQUIRED: bool = T::IS_REQUIRED;

    type ParamType = T;
    type ParamRawType = T::RawValueType;

    fn register(registry: &mut Registry) {
        T::register(registry);
    }

    fn param_in() -> Option<MetaParamIn> {
        Some(MetaParamIn::Path)
    }

    fn param_schema_ref() -> Option<MetaSchemaRef> {
        Some(T::schema_ref())
    }

    fn param_raw_type(&self) -> Option<&Self::ParamRawType> {
        self.0.as_raw_value()
    }

    async fn from_request(
        request: &'a Request,
        _body: &mut RequestBody,
        param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> Result<Self> {
        T::parse_from_parameters(request.raw_path_param(param_opts.name))
            .map(|v| Self(v, PhantomData))
            .map_err(|err| {
                ParsePathError {
                    name: N::NAME,
                    reason: err.into_message(),
                }
                .into()
            })
    }
}
