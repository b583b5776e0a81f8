// textcase-go. `wit-bindgen go` generates the bindings into this module
// (package main and one package per interface); cargo xtask plugins --all
// builds it offline (GOPROXY=off), with go.bytecodealliance.org/pkg taken
// from the wit-bindgen-go crate and placed at ./third_party/pkg.
module wit_component

go 1.25

require go.bytecodealliance.org/pkg v0.2.3

replace go.bytecodealliance.org/pkg => ./third_party/pkg
