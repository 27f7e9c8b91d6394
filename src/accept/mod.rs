//! Accept stage: TLS with client-certificate verification, HTTP/1.1 and HTTP/2, and limits on
//! connections and time. It never parses bodies.
pub mod tls;
