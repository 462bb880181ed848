//! COPY FROM STDIN: the connection's sink lives in its session extensions between
//! CopyData messages; rows are written every `copy_batch_rows`.

use std::fmt::Debug;

use async_trait::async_trait;
use eddy_query::CopyInSink;
use futures::{Sink, SinkExt};
use parking_lot::Mutex;
use pgwire::api::copy::CopyHandler;
use pgwire::api::results::Tag;
use pgwire::api::ClientInfo;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::PgWireBackendMessage;

use super::Backend;
use crate::error::{sqlstate, to_pg, user_error};

/// A COPY FROM in progress on one connection.
pub struct CopyState {
    sink: Box<CopyInSink>,
    written: u64,
}

type Slot = Mutex<Option<CopyState>>;

pub(crate) fn begin<C: ClientInfo>(client: &C, sink: Box<CopyInSink>) {
    let slot = client
        .session_extensions()
        .get_or_insert_with(|| Slot::new(None));
    *slot.lock() = Some(CopyState { sink, written: 0 });
}

fn take<C: ClientInfo>(client: &C) -> PgWireResult<CopyState> {
    client
        .session_extensions()
        .get::<Slot>()
        .and_then(|s| s.lock().take())
        .ok_or_else(|| user_error(sqlstate::INTERNAL_ERROR, "no COPY in progress"))
}

fn put_back<C: ClientInfo>(client: &C, st: CopyState) {
    if let Some(slot) = client.session_extensions().get::<Slot>() {
        *slot.lock() = Some(st);
    }
}

#[async_trait]
impl CopyHandler for Backend {
    async fn on_copy_data<C>(&self, client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // On error the state is dropped: pgwire ignores the rest of this COPY's data.
        let mut st = take(client)?;
        st.sink.push(&data.data).map_err(to_pg)?;
        if st.sink.pending() >= self.engine.config().copy_batch_rows {
            let rows = st.sink.take_rows();
            let lane = super::session_of(client).lock().lane();
            st.written += self
                .engine
                .copy_write(lane, &st.sink, rows)
                .await
                .map_err(to_pg)?;
        }
        put_back(client, st);
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let mut st = take(client)?;
        st.sink.finish_input().map_err(to_pg)?;
        let rows = st.sink.take_rows();
        let lane = super::session_of(client).lock().lane();
        st.written += self
            .engine
            .copy_write(lane, &st.sink, rows)
            .await
            .map_err(to_pg)?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(st.written as usize).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _ = take(client);
        user_error(
            sqlstate::QUERY_CANCELED,
            format!("COPY from stdin failed: {}", fail.message),
        )
    }
}
