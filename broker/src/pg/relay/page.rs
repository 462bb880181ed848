//! A relayed portal run with a row limit: the statement ran to its end on the other node,
//! and its rows are handed to the client here a page at a time.

use std::sync::Arc;

use bytes::Bytes;
use eddy_query::Prepared;
use pgwire::api::portal::Portal;

use super::backend::PORTAL_SUSPENDED;

/// What a relayed portal has left: rows (DataRow frames) and its CommandComplete.
pub(super) struct Page {
    /// The portal as bound when it ran: a portal bound again under the same name (even
    /// unseen here, say behind pipelined writes) is another one, and runs anew.
    pub(super) bound: Arc<Portal<Arc<Prepared>>>,
    /// Most rows per Execute (0: all).
    pub(super) max_rows: usize,
    /// Rows passed to the client by the Execute running now.
    pub(super) sent: usize,
    /// Rows held back.
    pub(super) rest: std::collections::VecDeque<Bytes>,
    /// Their bytes, and the most they may reach (`query.relay_page_bytes`).
    pub(super) held: usize,
    pub(super) limit: usize,
    /// The rows outgrew the limit: the rest of the answer is dropped and the Execute
    /// fails.
    pub(super) over: bool,
    /// The CommandComplete, sent after the last row (and for every Execute after it).
    pub(super) complete: Option<Bytes>,
}

impl Page {
    pub(super) fn new(bound: Arc<Portal<Arc<Prepared>>>, max_rows: usize, limit: usize) -> Page {
        Page {
            bound,
            max_rows,
            sent: 0,
            rest: Default::default(),
            held: 0,
            limit,
            over: false,
            complete: None,
        }
    }

    /// Holds a row past the page's limit. Returns false when it would outgrow the bytes
    /// a page may hold: then nothing is held any more.
    pub(super) fn hold(&mut self, row: Bytes) -> bool {
        if self.held + row.len() > self.limit {
            self.over = true;
            self.rest.clear();
            self.held = 0;
            return false;
        }
        self.held += row.len();
        self.rest.push_back(row);
        true
    }

    /// Whether the Execute running now has passed as many rows as it may.
    pub(super) fn full(&self) -> bool {
        self.max_rows != 0 && self.sent >= self.max_rows
    }

    /// The next Execute of the portal, `max_rows` at most (0: all): its rows from those
    /// held, then PortalSuspended while rows are left, else the CommandComplete (again,
    /// for every Execute after the last row, which then gets none).
    pub(super) fn next_page(&mut self, max_rows: usize, mut queue: impl FnMut(&[u8])) {
        self.max_rows = max_rows;
        self.sent = 0;
        while !self.full() {
            let Some(row) = self.rest.pop_front() else {
                break;
            };
            self.held -= row.len();
            queue(&row);
            self.sent += 1;
        }
        match (self.rest.is_empty(), &self.complete) {
            (true, Some(complete)) => queue(complete),
            _ => queue(PORTAL_SUSPENDED),
        }
    }
}
