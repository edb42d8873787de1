//! Loa's controller: takes uploaded audio, transcodes it to Ogg Opus, keeps
//! schedules, computes each receiver's play events and pushes them over
//! MQTT, stores proof of play, and runs live broadcasts (`live`).
//! `server::run` wires the parts together.

pub mod api;
pub mod auth;
pub mod broker;
pub mod bus;
pub mod config;
pub mod db;
pub mod distribution;
pub mod https;
pub mod ingest;
pub mod live;
pub mod mosquitto;
pub mod mqtt_auth;
#[cfg(feature = "embedded-broker")]
pub mod mqtt_front_end;
pub mod mqtt_tls;
pub mod rejections;
pub mod server;
pub mod signing;
pub mod state;
pub mod store;
pub mod tls_files;
pub mod topic_acl;
pub mod transcode;
pub mod web;
