//! SQL behaviour through the real pgwire server: golden files, tokio-postgres (extended
//! protocol), psql as a subprocess, and psycopg.

mod t10_slt;
mod t20_driver;
mod t25_stopping;
mod t30_psql;
mod t40_psycopg;
mod t50_subscribe;
mod t60_transports;
mod t70_durable;
mod t80_pipeline;
mod t90_observability;
