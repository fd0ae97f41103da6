//! `/api/files/*`: announces, listings, manifests and swarms.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use p2p_proto::api::{
    AnnounceRequest, AnnounceResponse, FileDetails, FileList, FilePeers, MemberGrants,
    ReadGrantInfo,
};
use p2p_proto::collection::{Collection, MAX_ENCODED_LEN};
use p2p_proto::{FileId, PeerId};
use poem::Body;
use poem::http::header::CONTENT_LENGTH;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{Binary, Json};
use poem_openapi::{ApiResponse, OpenApi};
use sha2::{Digest, Sha256};

use super::param::{Hash, Path, PeerIdName};
use super::{ApiTags, Auth, Reader};
use crate::auth::grants::{DEFAULT_GRANT_TTL, MAX_GRANT_TTL};
use crate::error::status::{
    ADMIN, AUTHED, CONFLICT, FORBIDDEN, JSON_BODY, LIMITED, NOT_FOUND, PARAMS, PEER_TOKEN, STORE,
    UNAUTHORIZED,
};
use crate::error::{ApiError, Refusals};
use crate::state::AppState;

pub struct FilesApi(pub Arc<AppState>);

/// Most folder collections read for member grants at once: each may hold up to
/// [`MAX_ENCODED_LEN`] bytes while it is read and checked, so together at most 64 MiB.
pub const MEMBER_GRANT_READS: usize = 4;

#[derive(ApiResponse)]
pub enum Unannounced {
    /// The peer no longer offers the file.
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
pub enum Removed {
    /// The file and every announce of it are gone (a `file_removed` event tells `/ws`).
    #[oai(status = 204)]
    NoContent,
}

#[derive(ApiResponse)]
pub enum GrantCreated {
    /// The grant: its holder may read this one id's details and peers until the expiry.
    #[oai(status = 201)]
    Created(Json<ReadGrantInfo>),
}

#[OpenApi(tag = "ApiTags::Files")]
impl FilesApi {
    /// A peer announces a file it has, whole or in part (`have`). The manifest is checked
    /// (chunk size, file size limit, chunk count, Merkle root). The tracker cannot check it
    /// against the content, so a manifest that differs from those stored under the same id is
    /// kept as a further variant with its own announcers (`variant` in the answer); downloaders
    /// verify and fall back. A new variant counts against the caller's quota (403
    /// `quota_exceeded`); a file whose every variant (at most `--max-manifest-variants`) has
    /// online announcers refuses more with 409. Needs the announcing peer's token (401
    /// `peer_token` without a valid one, 403 with another peer's).
    #[oai(
        path = "/api/files/announce",
        method = "post",
        operation_id = "announce_file"
    )]
    async fn announce(
        &self,
        auth: Auth,
        /// The announcing peer's token, from its registration.
        /// 144 hex characters; anything else is answered like a missing or expired token
        /// (401 `peer_token`), which sends the peer to register again.
        #[oai(name = "X-Peer-Token")]
        peer_token: Header<Option<String>>,
        body: Json<AnnounceRequest>,
    ) -> Result<
        Json<AnnounceResponse>,
        Refusals<{ AUTHED | JSON_BODY | PEER_TOKEN | FORBIDDEN | NOT_FOUND | CONFLICT | STORE }>,
    > {
        self.0
            .peer_auth
            .check_token(peer_token.0.as_deref(), &body.0.peer_id)?;
        Ok(Json(self.0.swarm.announce(body.0, &auth.0).await?))
    }

    /// Known files, newest first, with an optional case-insensitive name search.
    #[oai(path = "/api/files", method = "get", operation_id = "list_files")]
    async fn list(
        &self,
        _auth: Auth,
        /// Substring of the file name (case-insensitive), at most 255 characters.
        #[oai(default, validator(max_length = 255))]
        search: Query<String>,
        #[oai(default)] offset: Query<u64>,
        /// Page size (default 50, at most 500).
        #[oai(default)]
        limit: Query<u64>,
    ) -> Result<Json<FileList>, Refusals<{ AUTHED | PARAMS | STORE }>> {
        Ok(Json(
            self.0
                .swarm
                .list_files(&search.0, offset.0, limit.0)
                .await?,
        ))
    }

    /// A file's manifest (chunk hashes, Merkle root, chain), its manifest variants and swarm
    /// figures. Without `variant`, the manifest is the variant with the most online announcers.
    /// A read grant for this id (`X-Read-Grant`) will do instead of credentials: 403 for a
    /// grant of another id, 401 (`read_grant`) for an expired one.
    #[oai(path = "/api/files/:hash", method = "get", operation_id = "get_file")]
    async fn get(
        &self,
        reader: Reader,
        hash: Path<FileId, Hash>,
        /// The manifest variant to return (see `variants`); 404 if the file has none such.
        variant: Query<Option<u32>>,
    ) -> Result<Json<FileDetails>, Refusals<{ AUTHED | PARAMS | FORBIDDEN | NOT_FOUND | STORE }>>
    {
        reader.may_read(&self.0, &hash.0)?;
        Ok(Json(self.0.swarm.file(&hash.0, variant.0).await?))
    }

    /// A read grant for a file or folder collection: whoever holds it may read this one id's
    /// details and peers (and get admitted to it) until the expiry, without an API key; a
    /// share link carries it (docs/protocol.md §11). Grants are not stored and cannot be
    /// revoked before they expire. 404 for a file the tracker does not know.
    #[oai(
        path = "/api/files/:hash/grants",
        method = "post",
        operation_id = "create_read_grant"
    )]
    async fn grant(
        &self,
        auth: Auth,
        hash: Path<FileId, Hash>,
        /// Seconds the grant lasts: default 86400 (a day), at most 2592000 (30 days).
        #[oai(validator(minimum(value = "1"), maximum(value = "2592000")))]
        ttl_secs: Query<Option<u64>>,
    ) -> Result<GrantCreated, Refusals<{ AUTHED | PARAMS | NOT_FOUND | STORE }>> {
        let ttl = ttl_secs
            .0
            .map_or(DEFAULT_GRANT_TTL, Duration::from_secs)
            .min(MAX_GRANT_TTL);
        // Only files the tracker knows: a grant for anything else would read nothing. An index
        // lookup, not the manifest (up to 2^20 chunk hashes and a chain as long), which every
        // key holder's flood would otherwise load once per request.
        self.0.swarm.check_known(&hash.0).await?;
        let grant = self.0.grants.issue(hash.0, ttl);
        tracing::info!(by = %auth.0.subject, file = %hash.0, ttl_secs = ttl.as_secs(), "read grant issued");
        Ok(GrantCreated::Created(Json(ReadGrantInfo {
            file_id: hash.0,
            grant: grant.to_hex(),
            expires_at_ms: grant.expires_at_ms,
            expires_in_secs: ttl.as_secs(),
        })))
    }

    /// Read grants for a folder collection's member files, for the holder of a read grant for
    /// the collection (`X-Read-Grant`), so that a share link to a folder needs no API key: the
    /// body is the collection's canonical encoding (docs/protocol.md §10), at most 16 MiB,
    /// which must hash to `hash`. The answer has one grant per distinct non-empty member file,
    /// each ending when the collection's grant does (with credentials instead of a grant, a
    /// day from now). Nothing is stored. 400 for a body that is not the collection or not a
    /// valid one, 403 for a grant of another id, 401 (`read_grant`) for an expired one, 413 for
    /// a body over 16 MiB, 429 while too many collections are being read.
    #[oai(
        path = "/api/files/:hash/grants/members",
        method = "post",
        operation_id = "create_member_grants"
    )]
    async fn member_grants(
        &self,
        reader: Reader,
        hash: Path<FileId, Hash>,
        req: &poem::Request,
        /// The collection's canonical encoding.
        body: Binary<Body>,
    ) -> Result<Json<MemberGrants>, Refusals<{ LIMITED | UNAUTHORIZED | FORBIDDEN | JSON_BODY }>>
    {
        let state = &self.0;
        let collection_id = hash.0;
        reader.may_read(state, &collection_id)?;
        let declared = req
            .header(CONTENT_LENGTH)
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|len| len > MAX_ENCODED_LEN as u64) {
            return Err(collection_too_large().into());
        }
        // Held while the body is read and checked: bounds the memory of all such requests.
        let Ok(_permit) = state.member_grant_reads.clone().try_acquire_owned() else {
            return Err(ApiError::too_many_requests(1).into());
        };
        let bytes = read_collection(body.0, declared).await?;
        // Never past the collection's grant.
        let expires_at_ms = reader
            .until_ms()
            .unwrap_or_else(|| state.grants.expiry_after(DEFAULT_GRANT_TTL));
        let grants = state.grants.clone();
        let answer = tokio::task::spawn_blocking(move || {
            member_grants(&grants, collection_id, expires_at_ms, &bytes)
        })
        .await
        .map_err(|_| ApiError::internal())??;
        tracing::info!(collection = %collection_id, members = answer.grants.len(), "member read grants issued");
        Ok(Json(answer))
    }

    /// An admin removes a file for everyone: every peer's announce of it, every manifest
    /// variant and the file itself (it leaves the listings; a peer that announces it again
    /// brings it back). 403 unless the caller is an admin, 404 for an unknown file.
    #[oai(
        path = "/api/files/:hash",
        method = "delete",
        operation_id = "remove_file"
    )]
    async fn remove(
        &self,
        auth: Auth,
        hash: Path<FileId, Hash>,
    ) -> Result<Removed, Refusals<{ AUTHED | PARAMS | ADMIN | NOT_FOUND | STORE }>> {
        let admin = auth.admin()?;
        self.0.swarm.remove_file(&hash.0).await?;
        tracing::info!(by = %admin.subject, file = %hash.0, "file removed");
        Ok(Removed::NoContent)
    }

    /// Online peers that have the file, whole ones first, with the chunks each has, where to
    /// reach it and which manifest variant it announced. With the asking peer's token
    /// (`X-Peer-Token`) the answer carries the tracker's `admission` of that peer to the file
    /// (docs/protocol.md §9), which the file's peers want before serving a private file; 401
    /// (`peer_token`) for an invalid or expired token. A read grant for this id
    /// (`X-Read-Grant`) will do instead of credentials (403 for another id, 401 `read_grant`
    /// once expired); its holder, which never registered, proves its peer id with
    /// `X-Peer-Proof` instead of a token and gets an admission (not past the grant's expiry)
    /// and a `peer_token` for its later lookups.
    #[oai(
        path = "/api/files/:hash/peers",
        method = "get",
        operation_id = "file_peers"
    )]
    #[allow(clippy::too_many_arguments)]
    async fn peers(
        &self,
        reader: Reader,
        /// The asking peer's token, from its registration: the answer then carries its
        /// admission to the file. 144 hex characters; anything else is answered like an
        /// expired token (401 `peer_token`); without it the answer carries no admission.
        #[oai(name = "X-Peer-Token")]
        peer_token: Header<Option<String>>,
        /// Instead of a token: `<peer id>.<nonce>.<mac>` (hex), the answer to a challenge from
        /// `POST /api/peers/challenge` made with the peer id's key, as a registration's proof
        /// (docs/protocol.md §8); usable once. 401 (`peer_proof`) when stale, used or wrong.
        #[oai(name = "X-Peer-Proof")]
        peer_proof: Header<Option<String>>,
        hash: Path<FileId, Hash>,
        /// Leave this peer out (the asking peer itself).
        exclude: Query<Option<PeerId>>,
        /// Most peers to return (default 50, at most 500).
        #[oai(default)]
        limit: Query<u64>,
        /// Only peers that announced this manifest variant; 404 if the file has none such.
        variant: Query<Option<u32>>,
    ) -> Result<Json<FilePeers>, Refusals<{ AUTHED | PARAMS | FORBIDDEN | NOT_FOUND | STORE }>>
    {
        reader.may_read(&self.0, &hash.0)?;
        let proven = match peer_proof.0.as_deref() {
            Some(proof) => Some(self.0.peer_auth.verify_proof_header(proof)?),
            None => None,
        };
        let mut peers = self
            .0
            .swarm
            .file_peers(&hash.0, exclude.0.as_ref(), limit.0, variant.0)
            .await?;
        let until = reader.until_ms();
        let auth = &self.0.peer_auth;
        match proven {
            Some(peer) => {
                peers.admission = Some(auth.admit_peer(&peer, &hash.0, until));
                peers.peer_token = Some(auth.issue_token(&peer).token);
            }
            None => peers.admission = auth.admit(peer_token.0.as_deref(), &hash.0, until)?,
        }
        Ok(Json(peers))
    }

    /// The announcing peer stops offering one file: its claim to the file is removed (the file
    /// itself stays known). 404 when the peer is not registered ("not registered") or had not
    /// announced the file. Needs the peer's token (401 `peer_token`, 403 another peer's).
    #[oai(
        path = "/api/files/:hash/peers/:peer_id",
        method = "delete",
        operation_id = "unannounce_file"
    )]
    async fn unannounce(
        &self,
        _auth: Auth,
        /// The peer's token, from its registration.
        /// 144 hex characters; anything else is answered like a missing or expired token
        /// (401 `peer_token`), which sends the peer to register again.
        #[oai(name = "X-Peer-Token")]
        peer_token: Header<Option<String>>,
        hash: Path<FileId, Hash>,
        peer_id: Path<PeerId, PeerIdName>,
    ) -> Result<Unannounced, Refusals<{ AUTHED | PARAMS | PEER_TOKEN | NOT_FOUND | STORE }>> {
        self.0
            .peer_auth
            .check_token(peer_token.0.as_deref(), &peer_id.0)?;
        self.0.swarm.unannounce(&hash.0, &peer_id.0).await?;
        Ok(Unannounced::NoContent)
    }
}

fn collection_too_large() -> ApiError {
    ApiError::payload_too_large(format!(
        "a folder collection is at most {MAX_ENCODED_LEN} bytes"
    ))
}

/// The request body, refused (413) once it goes over [`MAX_ENCODED_LEN`]: never more than
/// that is held. The buffer is allocated once, for the declared length or else for the
/// largest collection: a buffer grown by doubling would, while copied, hold up to 1.5 times
/// that, and reserved pages cost memory only once the body's bytes are written to them.
async fn read_collection(body: Body, declared: Option<u64>) -> Result<Vec<u8>, ApiError> {
    let mut stream = body.into_bytes_stream();
    let capacity = declared.map_or(MAX_ENCODED_LEN, |len| {
        len.min(MAX_ENCODED_LEN as u64) as usize
    });
    let mut bytes = Vec::with_capacity(capacity);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::bad_request(format!("the request body could not be read: {e}"))
        })?;
        if bytes.len() + chunk.len() > MAX_ENCODED_LEN {
            return Err(collection_too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Grants ending at `expires_at_ms` for the members of the collection `bytes` encodes, once
/// they hash to `collection_id` and decode as a valid collection.
fn member_grants(
    grants: &crate::auth::ReadGrants,
    collection_id: FileId,
    expires_at_ms: u64,
    bytes: &[u8],
) -> Result<MemberGrants, ApiError> {
    let hashed = FileId(Sha256::digest(bytes).into());
    if hashed != collection_id {
        return Err(ApiError::bad_request(format!(
            "the body is not the collection {collection_id}: its {} bytes hash to {hashed}",
            bytes.len()
        )));
    }
    let collection = Collection::decode(bytes)
        .map_err(|e| ApiError::bad_request(format!("not a valid folder collection: {e}")))?;
    let mut seen = std::collections::HashSet::new();
    let grants = collection
        .files()
        .filter(|&(_, id, size, _)| size > 0 && seen.insert(id))
        .map(|(_, id, _, _)| grants.issue_until(id, expires_at_ms).to_hex())
        .collect();
    Ok(MemberGrants {
        collection_id,
        expires_at_ms,
        grants,
    })
}
