// examples/mytcp/tests/conformance.rs
courier_testkit::conformance_tests!(
    "mytcp",
    setup = || courier::install_plugin(mytcp::MyTcpPlugin)
);
