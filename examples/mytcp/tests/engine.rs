// examples/mytcp/tests/engine.rs
use courier::transport::Registry;
use courier::{Engine, Handle};

#[tokio::test]
async fn hello_over_mytcp() -> courier::Result<()> {
    // A registry of one's own: the built-in protocol table plus this plugin.
    let registry = Registry::new().with(mytcp::MyTcpPlugin);
    let server = Engine::builder("mytcp")
        .registry(registry.clone())
        .build()
        .await?;
    server.register("hello", |handle: Handle, name: String| async move {
        handle.respond(&format!("Hello {name}")).await
    })?;
    assert!(server
        .address()
        .to_string()
        .starts_with("mytcp://127.0.0.1:"));

    let client = Engine::builder("mytcp")
        .registry(registry)
        .client()
        .build()
        .await?;
    let address = client.lookup(&server.address().to_string()).await?;
    let hello = client.remote::<String, String>("hello");
    assert_eq!(
        hello.on(&address).call(&"mytcp".to_owned()).await?,
        "Hello mytcp"
    );
    server.finalize().await;
    Ok(())
}
