"""Generated code for the stepline.v1 protobuf package. Do not edit: run `make proto`.

Sources: proto/stepline/v1/*.proto. The FileDescriptorSet of every file (imports and comments
included) ships next to this module as descriptor_set.binpb.
"""
