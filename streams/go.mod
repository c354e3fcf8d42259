module github.com/shardflow/shardflow/streams

go 1.26.0
