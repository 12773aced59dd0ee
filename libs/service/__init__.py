"""The shared service runtime: settings, logging, HTTP skeleton, consumer loop, infrastructure."""
