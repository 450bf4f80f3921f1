//! videochat-operator: the VideoChatCluster operator.
