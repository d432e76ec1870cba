// Command etcd is the etcd server, built from the pinned module
// go.etcd.io/etcd/server/v3 for the broker's cluster tests and benchmarks.
// `go install go.etcd.io/etcd/server/v3@version` refuses the module because
// its go.mod has replace directives (relative paths into etcd's own
// repository); as a dependency of this module those are ignored and the
// published api, client and pkg modules of the same version are used.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
