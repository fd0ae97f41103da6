//! `/api/files/*`: announces, listings, manifests and swarms.

use std::sync::Arc;

use p2p_proto::api::{AnnounceRequest, AnnounceResponse, FileDetails, FileList, FilePeers};
use p2p_proto::{FileId, PeerId};
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};

use super::param::{Hash, Path, PeerIdName};
use super::{ApiTags, Auth};
use crate::error::Refusals;
use crate::error::status::{
    ADMIN, AUTHED, CONFLICT, FORBIDDEN, JSON_BODY, NOT_FOUND, PARAMS, PEER_TOKEN, STORE,
};
use crate::state::AppState;

pub struct FilesApi(pub Arc<AppState>);

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
    #[oai(path = "/api/files/:hash", method = "get", operation_id = "get_file")]
    async fn get(
        &self,
        _auth: Auth,
        hash: Path<FileId, Hash>,
        /// The manifest variant to return (see `variants`); 404 if the file has none such.
        variant: Query<Option<u32>>,
    ) -> Result<Json<FileDetails>, Refusals<{ AUTHED | PARAMS | NOT_FOUND | STORE }>> {
        Ok(Json(self.0.swarm.file(&hash.0, variant.0).await?))
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
    /// (`peer_token`) for an invalid or expired token.
    #[oai(
        path = "/api/files/:hash/peers",
        method = "get",
        operation_id = "file_peers"
    )]
    async fn peers(
        &self,
        _auth: Auth,
        /// The asking peer's token, from its registration: the answer then carries its
        /// admission to the file. 144 hex characters; anything else is answered like an
        /// expired token (401 `peer_token`); without it the answer carries no admission.
        #[oai(name = "X-Peer-Token")]
        peer_token: Header<Option<String>>,
        hash: Path<FileId, Hash>,
        /// Leave this peer out (the asking peer itself).
        exclude: Query<Option<PeerId>>,
        /// Most peers to return (default 50, at most 500).
        #[oai(default)]
        limit: Query<u64>,
        /// Only peers that announced this manifest variant; 404 if the file has none such.
        variant: Query<Option<u32>>,
    ) -> Result<Json<FilePeers>, Refusals<{ AUTHED | PARAMS | NOT_FOUND | STORE }>> {
        let mut peers = self
            .0
            .swarm
            .file_peers(&hash.0, exclude.0.as_ref(), limit.0, variant.0)
            .await?;
        peers.admission = self.0.peer_auth.admit(peer_token.0.as_deref(), &hash.0)?;
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
