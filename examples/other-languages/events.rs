// Record a tool call in tether from Rust, through the tether gateway: the standard library only
// (HTTP/1.1 over a TcpStream, the JSON written by hand), as curl would send it.
//
//   rustc -O events.rs && TETHER_GATEWAY_URL=http://127.0.0.1:8400 TETHER_GATEWAY_KEY=tg-... ./events
use std::env;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{SystemTime, UNIX_EPOCH};

fn post(host_port: &str, path: &str, key: &str, traceparent: &str, content_type: &str, body: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(host_port).expect("the gateway is not reachable");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {key}\r\ntraceparent: {traceparent}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn main() {
    let url = env::var("TETHER_GATEWAY_URL").unwrap_or_else(|_| "http://127.0.0.1:8400".into());
    let key = env::var("TETHER_GATEWAY_KEY").expect("set TETHER_GATEWAY_KEY to a gateway key");
    let host_port = url.trim_start_matches("http://").trim_end_matches('/').to_string();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let trace = env::var("TRACE_ID").unwrap_or_else(|_| format!("{:032x}", nanos));
    let traceparent = format!("00-{trace}-{:016x}-01", nanos as u64 | 1);
    let call = format!("rs-{nanos}");
    let batch = format!(
        r#"[{{"specversion":"1.0","id":"{call}-r","source":"urn:agent:rust-example","type":"tether.tool.call.requested","data":{{"call_id":"{call}","tool":"grep","arguments":{{"pattern":"nats"}}}}}},
{{"specversion":"1.0","id":"{call}-c","source":"urn:agent:rust-example","type":"tether.tool.call.completed","data":{{"call_id":"{call}","tool":"grep","result":["a.txt:1: nats"],"duration_ms":3.5}}}}]"#
    );
    let (status, body) = post(&host_port, "/v1/events", &key, &traceparent, "application/cloudevents-batch+json", &batch);
    println!("{status} {body}");
    if status != 202 {
        std::process::exit(1);
    }
}
